//! A hostile look at baggage on any carrier (`inject_into`, `extract`): a message consumer
//! fed by concurrent producers through an in-process queue, with hostile messages between the
//! good ones (too long, too many entries, raw non-ASCII, control bytes, values that do not
//! parse, broken escapes and properties, repeated keys, mixed-case and duplicated carrier
//! keys, optional whitespace); the W3C limits at their exact edges; and what `inject_into`
//! writes under the limits reading back through `extract`.

#![cfg(feature = "baggage")]

use std::collections::{BTreeMap, HashMap};

use axum::http;
use contextvars::baggage::{BaggageError, Extractor, MAX_BYTES, MAX_ENTRIES, extract, inject_into};
use contextvars::metadata::{MetadataFlags, get_all_metadata, get_metadata, set_metadata_with};
use contextvars::{Context, FutureExt, context_var};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

type Message = HashMap<String, String>;

fn with_baggage(baggage: &str) -> Message {
    HashMap::from([("baggage".to_string(), baggage.to_string())])
}

/// What a consumer's handler reads: the typed values.
type Seen = (Option<String>, Option<u64>);

/// What a hostile message must give: its values, or an error naming this key (`Some(None)`:
/// an error of the whole header).
enum Expect {
    Values(Seen),
    Error(Option<&'static str>),
    /// An error that quotes the entry, whatever its kind.
    Quoting(&'static str),
}

/// The hostile messages, each with what it must give.
fn hostile() -> Vec<(Message, Expect)> {
    use Expect::{Error, Quoting, Values};
    let mut both_keys = with_baggage("tenant=lower");
    both_keys.insert("Baggage".into(), "tenant=upper".into());
    both_keys.insert("BAGGAGE".into(), "user_id=1".into());
    vec![
        (
            with_baggage(&format!("tenant={}", "x".repeat(9000))),
            Error(None),
        ),
        (with_baggage(&vec!["k=v"; 181].join(",")), Error(None)),
        (with_baggage("tenant=caf\u{e9}"), Quoting("tenant")),
        (with_baggage("tenant=a\u{0}b"), Quoting("tenant")),
        (with_baggage("tenant=ok,user_id=-1"), Error(Some("user_id"))),
        (
            with_baggage("user_id=18446744073709551616"),
            Error(Some("user_id")),
        ),
        (with_baggage("tenant=%E2%82"), Error(Some("tenant"))),
        (with_baggage("tenant=50%"), Error(Some("tenant"))),
        (with_baggage("tenant=ok;p=%zz"), Error(Some("tenant"))),
        (
            with_baggage("tenant=a,tenant=b,user_id=1,user_id=2"),
            Values((Some("b".into()), Some(2))),
        ),
        (
            with_baggage(" tenant = spaced ,\tuser_id = 9 "),
            Values((Some("spaced".into()), Some(9))),
        ),
        (
            HashMap::from([("Baggage".to_string(), "tenant=upper".to_string())]),
            Values((None, None)),
        ),
        (both_keys, Values((Some("lower".into()), None))),
        (HashMap::new(), Values((None, None))),
    ]
}

/// The good message a producer sends: values that need escapes.
fn good_values(producer: u64, n: u64) -> Seen {
    (
        Some(format!("producer {producer}, msg {n}; é=%+\\")),
        Some(producer * 1000 + n),
    )
}

/// Concurrent producers publish through a queue; a consumer with no context of its own
/// extracts each message, refuses each hostile one alone (with the error the table gives),
/// and runs each good one in its own context in a task of its own: every handler reads
/// exactly its message's values, never a previous message's nor what a previous handler set,
/// and the consumer keeps going to the last message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_refuses_each_hostile_message_alone_and_keeps_running() {
    const PRODUCERS: u64 = 4;
    const MESSAGES: u64 = 40;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Message)>(16);
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let tx = tx.clone();
        producers.push(contextvars::spawn(async move {
            let hostile = hostile();
            for n in 0..MESSAGES {
                let (tenant, user) = good_values(producer, n);
                let mut message = Context::new().run(|| {
                    let _ = TENANT.set(tenant.unwrap());
                    let _ = USER_ID.set(user.unwrap());
                    let mut message = HashMap::from([("id".to_string(), "x".to_string())]);
                    assert_eq!(inject_into(&mut message), 0);
                    message
                });
                message.insert("id".into(), format!("good {producer} {n}"));
                tx.send((format!("good {producer} {n}"), message))
                    .await
                    .unwrap();
                let i = usize::try_from(n).unwrap() % hostile.len();
                tx.send((format!("hostile {i}"), hostile[i].0.clone()))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    drop(tx);
    // The consumer: a plain task, as a broker client's.
    let consumer = tokio::spawn(async move {
        let mut handled = Vec::new();
        while let Some((id, message)) = rx.recv().await {
            match extract(&message) {
                Ok(context) => {
                    let task = contextvars::spawn(
                        async {
                            tokio::task::yield_now().await;
                            let seen = (TENANT.get(), USER_ID.get());
                            // What a handler sets stays in its message's context.
                            let _ = TENANT.set("set by a handler".into());
                            let _ = USER_ID.set(u64::MAX);
                            seen
                        }
                        .with_context(context),
                    );
                    handled.push((id, task.await.map(Ok).unwrap()));
                }
                Err(err) => handled.push((id, Err(err))),
            }
            assert_eq!((TENANT.get(), USER_ID.get()), (None, None));
        }
        handled
    });
    for producer in producers {
        producer.await.unwrap();
    }
    let handled = consumer.await.unwrap();
    assert_eq!(
        handled.len(),
        usize::try_from(PRODUCERS * MESSAGES * 2).unwrap()
    );
    let hostile = hostile();
    for (id, result) in handled {
        let words: Vec<&str> = id.split(' ').collect();
        match words[..] {
            ["good", producer, n] => {
                let expected = good_values(producer.parse().unwrap(), n.parse().unwrap());
                assert_eq!(result, Ok(expected), "{id}");
            }
            ["hostile", i] => match &hostile[i.parse::<usize>().unwrap()].1 {
                Expect::Values(values) => assert_eq!(result.as_ref(), Ok(values), "{id}"),
                Expect::Error(key) => {
                    let err: BaggageError = result.expect_err(&id);
                    assert_eq!(err.key(), *key, "{id}: {err}");
                }
                Expect::Quoting(key) => {
                    let err: BaggageError = result.expect_err(&id);
                    assert!(err.key().is_some_and(|k| k.contains(key)), "{id}: {err}");
                    assert!(err.to_string().contains(key), "{id}: {err}");
                }
            },
            _ => unreachable!("{id}"),
        }
    }
}

/// The limits at their exact edges: a header of `MAX_BYTES` bytes and one of `MAX_ENTRIES`
/// entries are read, one byte or one entry more is refused; on an `http::HeaderMap`, the
/// lines count joined with a comma.
#[test]
fn the_limits_hold_at_their_exact_edges() {
    let at_limit = format!("note={}", "x".repeat(MAX_BYTES - 5));
    assert_eq!(at_limit.len(), MAX_BYTES);
    let mut context = extract(&with_baggage(&at_limit)).expect("exactly MAX_BYTES");
    assert_eq!(
        context.run(|| get_metadata("note")).map(|v| v.len()),
        Some(MAX_BYTES - 5)
    );
    let over = format!("{at_limit}x");
    assert_eq!(
        extract(&with_baggage(&over)).unwrap_err(),
        BaggageError::TooLong {
            bytes: MAX_BYTES + 1
        }
    );

    let entries = |count: usize| {
        (0..count)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut context = extract(&with_baggage(&entries(MAX_ENTRIES))).expect("MAX_ENTRIES");
    assert_eq!(context.run(get_all_metadata).len(), MAX_ENTRIES);
    assert_eq!(
        extract(&with_baggage(&entries(MAX_ENTRIES + 1))).unwrap_err(),
        BaggageError::TooManyEntries {
            entries: MAX_ENTRIES + 1
        }
    );

    // Two lines of a `HeaderMap`: 4,096 + a comma + 4,095 bytes fit, one more does not.
    let line = |key: &str, len: usize| format!("{key}={}", "y".repeat(len - key.len() - 1));
    let mut headers = http::HeaderMap::new();
    headers.append("baggage", line("a", 4096).parse().unwrap());
    headers.append("baggage", line("b", 4095).parse().unwrap());
    assert!(extract(&headers).is_ok());
    let mut headers = http::HeaderMap::new();
    headers.append("baggage", line("a", 4096).parse().unwrap());
    headers.append("baggage", line("b", 4096).parse().unwrap());
    assert_eq!(
        extract(&headers).unwrap_err(),
        BaggageError::TooLong {
            bytes: MAX_BYTES + 1
        }
    );
}

/// `inject_into` with more to write than the limits allow: it leaves entries out, says how
/// many, and what it wrote (with what the carrier held) reads back through `extract`, every
/// written entry intact; also into a carrier whose line is already almost full or only
/// whitespace.
#[test]
fn what_inject_writes_past_the_limits_reads_back() {
    // 250 entries of about 40 bytes each, with characters that need escapes.
    let entries: BTreeMap<String, String> = (0..250)
        .map(|i| {
            (
                format!("key{i:03}"),
                format!("v{i} é,;=%+ {}", "z".repeat(i % 30)),
            )
        })
        .collect();
    let cases = [
        BTreeMap::new(),
        BTreeMap::from([("baggage".to_string(), "  \t".to_string())]),
        BTreeMap::from([("baggage".to_string(), format!("pre={}", "p".repeat(8000)))]),
        BTreeMap::from([(
            "baggage".to_string(),
            (0..170)
                .map(|i| format!("pre{i}=1"))
                .collect::<Vec<_>>()
                .join(","),
        )]),
    ];
    for mut carrier in cases {
        let before = carrier.get("baggage").cloned();
        let left_out = Context::new().run(|| {
            for (key, value) in &entries {
                set_metadata_with(key.clone(), value.clone(), MetadataFlags::BAGGAGE);
            }
            inject_into(&mut carrier)
        });
        assert!(left_out > 0, "{before:.20?}");
        let written = carrier["baggage"].clone();
        assert!(
            written.len() <= MAX_BYTES,
            "{before:.20?}: {}",
            written.len()
        );
        let mut received = extract(&carrier)
            .unwrap_or_else(|err| panic!("{before:.20?}: our own header is refused: {err}"));
        let metadata = received.run(get_all_metadata);
        let ours: Vec<(&String, &String)> = metadata
            .iter()
            .filter(|(key, _)| key.starts_with("key"))
            .collect();
        assert_eq!(ours.len(), entries.len() - left_out, "{before:.20?}");
        for (key, value) in ours {
            assert_eq!(Some(value), entries.get(key), "{key}");
        }
    }
}

/// An entry with a bad escape makes the header malformed, and a malformed header is refused
/// as a whole ("tenant=50%off" alone is), even where a later entry repeats the key: only a
/// key repeated in a valid header is accepted with its last value.
#[test]
fn a_malformed_entry_is_refused_even_when_a_later_entry_repeats_its_key() {
    for (header, key) in [
        ("tenant=%zz,tenant=ok", "tenant"),
        ("tenant=%E2%82,tenant=ok", "tenant"),
        ("tenant=a;p=%zz,tenant=b", "tenant"),
        ("note=%zz,note=x", "note"),
    ] {
        let alone = header.split(',').next().unwrap();
        assert_eq!(
            extract(&with_baggage(alone)).unwrap_err().key(),
            Some(key),
            "{alone}"
        );
        let refused = extract(&with_baggage(header)).map(|mut c| c.run(get_all_metadata));
        assert_eq!(
            refused.as_ref().map_err(BaggageError::key),
            Err(Some(key)),
            "{header}"
        );
    }
}

/// A value its variable's type does not parse is a bad entry like a malformed one: the header
/// is refused as with that entry alone, even where a later good entry repeats the key (a
/// `u64` of "abc" before one of "80" must not pass as 80), and whichever order they come in.
#[test]
fn a_value_its_type_does_not_parse_is_refused_even_when_a_later_entry_repeats_its_key() {
    for header in [
        "user_id=abc,user_id=80",
        "user_id=80,user_id=abc",
        "tenant=a,user_id=abc,tenant=b,user_id=80",
    ] {
        assert_eq!(
            extract(&with_baggage("user_id=abc")).unwrap_err().key(),
            Some("user_id"),
        );
        let refused = extract(&with_baggage(header)).map(|mut c| c.run(|| USER_ID.get()));
        assert_eq!(
            refused.as_ref().map_err(BaggageError::key),
            Err(Some("user_id")),
            "{header}"
        );
    }
    // A key repeated with good values only is valid: the last wins.
    let mut accepted = extract(&with_baggage("user_id=7,tenant=a,user_id=80")).unwrap();
    assert_eq!(
        accepted.run(|| (USER_ID.get(), TENANT.get())),
        (Some(80), Some("a".to_string()))
    );
}

/// `Extractor::only_keys`: a consumer reads only the keys it lists; the others are not set,
/// not kept, not forwarded, and a bad value under an unlisted key is no error.
#[test]
fn an_extractor_limited_to_keys_reads_only_those() {
    let extractor = Extractor::new().only_keys(["tenant"]);
    let mut context = extractor
        .extract(&with_baggage("tenant=acme,user_id=7,note=x,bad=%zz"))
        .unwrap();
    let (tenant, user, note) = context.run(|| (TENANT.get(), USER_ID.get(), get_metadata("note")));
    assert_eq!(tenant.as_deref(), Some("acme"));
    assert_eq!((user, note), (None, None));
    let mut out = Message::new();
    context.run(|| inject_into(&mut out));
    assert_eq!(out["baggage"], "tenant=acme");
    // A bad value under a listed key is still the header's error.
    assert_eq!(
        extractor
            .extract(&with_baggage("tenant=%zz"))
            .unwrap_err()
            .key(),
        Some("tenant")
    );
}

/// `Extractor::forward_unclaimed(false)`: the entries no variable claims are readable in the
/// returned context but not sent on by `inject_into`; with the default they are.
#[test]
fn an_extractor_that_does_not_forward_unclaimed_entries_keeps_them_readable_only() {
    let message = with_baggage("tenant=acme,campaign=spring");
    let mut kept = Extractor::new()
        .forward_unclaimed(false)
        .extract(&message)
        .unwrap();
    let mut out = Message::new();
    let campaign = kept.run(|| {
        inject_into(&mut out);
        get_metadata("campaign")
    });
    assert_eq!(campaign.as_deref(), Some("spring"));
    assert_eq!(out["baggage"], "tenant=acme");
    let mut forwarded = Extractor::new().extract(&message).unwrap();
    let mut out = Message::new();
    forwarded.run(|| inject_into(&mut out));
    assert_eq!(out["baggage"], "tenant=acme,campaign=spring");
}

/// `Extractor::ignore_bad_entries`: a bad entry (malformed, or a value its type does not
/// parse) is skipped and reported, the good ones are read, and `extract` gives `Ok`; a header
/// over the limits is skipped whole and reported.
#[test]
fn an_extractor_that_ignores_bad_entries_reads_the_good_ones_and_reports_the_rest() {
    let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&reported);
    let extractor = Extractor::new().ignore_bad_entries(move |err: &BaggageError| {
        let too_long = matches!(err, BaggageError::TooLong { .. });
        sink.lock().unwrap().push(
            err.key()
                .map(str::to_string)
                .or(too_long.then(|| "too long".to_string())),
        );
    });
    let mut context = extractor
        .extract(&with_baggage(
            "tenant=%zz,user_id=abc,campaign=spring,tenant=ok",
        ))
        .unwrap();
    let (tenant, user, campaign) =
        context.run(|| (TENANT.get(), USER_ID.get(), get_metadata("campaign")));
    assert_eq!(tenant.as_deref(), Some("ok"));
    assert_eq!(user, None);
    assert_eq!(campaign.as_deref(), Some("spring"));
    assert_eq!(
        std::mem::take(&mut *reported.lock().unwrap()),
        [Some("tenant".to_string()), Some("user_id".to_string())]
    );
    let too_long = format!("tenant={}", "x".repeat(MAX_BYTES));
    let mut context = extractor.extract(&with_baggage(&too_long)).unwrap();
    assert_eq!(context.run(|| TENANT.get()), None);
    assert_eq!(*reported.lock().unwrap(), [Some("too long".to_string())]);
    // Without the option, the same headers are errors.
    assert!(Extractor::new().extract(&with_baggage(&too_long)).is_err());
}
