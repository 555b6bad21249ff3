//! Baggage on any carrier of string pairs: `contextvars::baggage::inject_into` writes, and
//! `contextvars::baggage::extract` reads into a new context, through the `Carrier` trait,
//! implemented for `http::HeaderMap`, `HashMap` and `BTreeMap`, and by a user's own type in a
//! few lines; the same checks and errors as the server's.

use std::collections::{BTreeMap, HashMap};

use axum::http;
use contextvars::baggage::{BaggageError, Carrier, extract, inject_into};
use contextvars::metadata::{MetadataFlags, get_metadata, set_metadata, set_metadata_with};
use contextvars::{Context, context_var};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

fn map(baggage: &str) -> HashMap<String, String> {
    HashMap::from([("baggage".to_string(), baggage.to_string())])
}

/// What a context holds, for comparing.
fn seen(context: &mut Context) -> (Option<String>, Option<u64>, Option<String>) {
    context.run(|| (TENANT.get(), USER_ID.get(), get_metadata("note")))
}

#[test]
fn extract_reads_a_map_into_a_new_context_typed() {
    let mut context = extract(&map("tenant=acme%20corp,user_id=42,note=a%3Db;p=1")).unwrap();
    assert_eq!(
        seen(&mut context),
        (Some("acme corp".into()), Some(42), Some("a=b".into()))
    );
    // The same from a `BTreeMap` and an `http::HeaderMap`.
    let tree = BTreeMap::from([("baggage".to_string(), "user_id=7".to_string())]);
    assert_eq!(seen(&mut extract(&tree).unwrap()).1, Some(7));
    let mut headers = http::HeaderMap::new();
    headers.append("baggage", "user_id=8".parse().unwrap());
    headers.append("baggage", "note=x".parse().unwrap());
    assert_eq!(
        seen(&mut extract(&headers).unwrap()),
        (None, Some(8), Some("x".into()))
    );
    // Nothing of it is set in the caller's context.
    assert_eq!(TENANT.get(), None);
    assert_eq!(get_metadata("note"), None);
}

#[test]
fn only_the_lowercase_baggage_key_is_read_and_written() {
    let carrier = HashMap::from([
        ("Baggage".to_string(), "user_id=1".to_string()),
        ("BAGGAGE".to_string(), "user_id=2".to_string()),
        ("traceparent".to_string(), "user_id=3".to_string()),
    ]);
    let mut context = extract(&carrier).unwrap();
    assert_eq!(seen(&mut context), (None, None, None));

    let mut written = HashMap::from([("other".to_string(), "kept".to_string())]);
    Context::new().run(|| {
        let _ = USER_ID.set(9);
        assert_eq!(inject_into(&mut written), 0);
    });
    assert_eq!(
        written,
        HashMap::from([
            ("other".to_string(), "kept".to_string()),
            ("baggage".to_string(), "user_id=9".to_string()),
        ])
    );
}

#[test]
fn what_the_current_context_holds_wins_over_the_carrier() {
    let mut own = Context::new();
    own.run(|| {
        let _ = TENANT.set("mine".to_string());
        set_metadata("note", "private");
        let mut received =
            extract(&map("tenant=theirs,note=theirs,user_id=5")).expect("a good header");
        assert_eq!(
            seen(&mut received),
            (Some("mine".into()), Some(5), Some("private".into()))
        );
        // The private entry stays private: the next hop does not get it.
        let mut next = BTreeMap::new();
        received.run(|| inject_into(&mut next));
        assert_eq!(next["baggage"], "tenant=mine,user_id=5");
    });
}

#[test]
fn a_bad_header_is_an_error_naming_the_entry() {
    let cases = [
        ("user_id=forty-two", Some("user_id")),
        ("tenant=50%off", Some("tenant")),
        ("tenant=a;p=%zz", Some("tenant")),
        ("tenant=a,,", Some("")),
        ("ten ant=x", Some("ten ant=x")),
        ("user_id", Some("user_id")),
    ];
    for (header, key) in cases {
        let err: BaggageError = extract(&map(header)).expect_err(header);
        assert_eq!(err.key(), key, "{header}: {err}");
        assert!(err.to_string().starts_with("bad baggage header"), "{err}");
    }
    let long = format!("note={}", "x".repeat(8192));
    assert_eq!(
        extract(&map(&long)).unwrap_err(),
        BaggageError::TooLong { bytes: 8197 }
    );
    // A repeated key is not an error: the last value wins.
    let mut context = extract(&map("user_id=1,user_id=2")).unwrap();
    assert_eq!(seen(&mut context).1, Some(2));
}

#[tokio::test]
async fn extract_works_in_a_task_that_has_no_context() {
    let got = tokio::spawn(async {
        let mut context = extract(&map("tenant=t,user_id=3")).unwrap();
        let inside = seen(&mut context);
        let fut = async { (TENANT.get(), USER_ID.get()) };
        let in_future = contextvars::FutureExt::with_context(fut, context).await;
        (inside, in_future, TENANT.get())
    })
    .await
    .unwrap();
    assert_eq!(got.0, (Some("t".into()), Some(3), None));
    assert_eq!(got.1, (Some("t".into()), Some(3)));
    assert_eq!(got.2, None);
}

/// A broker's headers as a list of pairs: the few lines a user writes.
#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Carrier for Pairs {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value));
    }
}

#[test]
fn a_users_carrier_forwards_what_it_received_unchanged() {
    let incoming = Pairs(vec![(
        "baggage".into(),
        "tenant=a%3db;src=idp,note=x=y;p,user_id=4".into(),
    )]);
    let mut received = extract(&incoming).unwrap();
    let mut outgoing = Pairs(vec![("baggage".into(), "hop=2".into())]);
    let left_out = received.run(|| {
        set_metadata_with("added", "é", MetadataFlags::BAGGAGE);
        inject_into(&mut outgoing)
    });
    assert_eq!(left_out, 0);
    assert_eq!(
        outgoing.get("baggage"),
        Some("hop=2,tenant=a%3db;src=idp,user_id=4,added=%C3%A9,note=x=y;p")
    );
}

#[test]
fn a_header_line_that_is_not_text_is_an_error_of_the_whole_header() {
    let mut headers = http::HeaderMap::new();
    headers.append("baggage", "user_id=1".parse().unwrap());
    headers.append(
        "baggage",
        http::HeaderValue::from_bytes(b"tenant=caf\xE9").unwrap(),
    );
    assert_eq!(extract(&headers).unwrap_err(), BaggageError::NotText);
}
