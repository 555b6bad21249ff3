//! Hostile tests of `contextvars::baggage::Extractor` (`only_keys`, `forward_unclaimed`,
//! `ignore_bad_entries`) on the carriers a consumer really meets: many `baggage` lines
//! (`Carrier::get_all`), a line that is not text among good ones, a key repeated up to the
//! entry limit, entries bad only in their variable's type (`u16` given 70000), a report
//! callback that panics, sets a variable or extracts again, and one extractor shared by many
//! threads at once.

#![cfg(feature = "baggage")]

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use contextvars::baggage::{BaggageError, Extractor, MAX_ENTRIES, inject_into};
use contextvars::context_var;
use contextvars::metadata::{get_all_metadata, get_metadata};

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "port")]
static PORT: u16;

/// A broker's headers that can hold `baggage` more than once, some lines not text.
#[derive(Default)]
struct Lines(Vec<(String, Result<String, Vec<u8>>)>);

impl Lines {
    fn text<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Self {
        Lines(
            lines
                .into_iter()
                .map(|line| ("baggage".to_string(), Ok(line.as_ref().to_string())))
                .collect(),
        )
    }
}

impl contextvars::baggage::Carrier for Lines {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|(k, v)| match v {
            Ok(text) if k == key => Some(text.as_str()),
            _ => None,
        })
    }
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), Ok(value)));
    }
    fn get_all(&self, key: &str) -> Vec<Result<&str, &[u8]>> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| match v {
                Ok(text) => Ok(text.as_str()),
                Err(bytes) => Err(bytes.as_slice()),
            })
            .collect()
    }
}

/// A report callback that records what it is given, and the records.
fn recording() -> (
    Arc<Mutex<Vec<BaggageError>>>,
    impl Fn(&BaggageError) + Send + Sync + 'static,
) {
    let reported = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&reported);
    (reported, move |err: &BaggageError| {
        sink.lock().unwrap().push(err.clone());
    })
}

/// The entries of a carrier spread over many `baggage` lines are one list: 180 lines of one
/// entry each are all read, a 181st entry on a line of its own makes the header too long in
/// entries (an error naming the count, or with `ignore_bad_entries` one report and nothing
/// read from any line).
#[test]
fn entries_on_many_lines_count_together_against_the_entry_limit() {
    let at_limit = Lines::text((0..MAX_ENTRIES).map(|i| format!("k{i}=v{i}")));
    let mut context = Extractor::new().extract(&at_limit).unwrap();
    let all = context.run(get_all_metadata);
    assert_eq!(all.len(), MAX_ENTRIES);
    assert_eq!(all["k179"], "v179");

    let over = Lines::text((0..=MAX_ENTRIES).map(|i| format!("k{i}=v{i}")));
    assert_eq!(
        Extractor::new().extract(&over).unwrap_err(),
        BaggageError::TooManyEntries {
            entries: MAX_ENTRIES + 1
        }
    );
    let (reported, report) = recording();
    let mut context = Extractor::new()
        .ignore_bad_entries(report)
        .extract(&over)
        .unwrap();
    assert!(context.run(get_all_metadata).is_empty());
    assert_eq!(
        *reported.lock().unwrap(),
        [BaggageError::TooManyEntries {
            entries: MAX_ENTRIES + 1
        }]
    );
}

/// A line that is not text among good lines makes the whole header bad: an error
/// (`NotText`), even with `only_keys` listing only the good lines' keys; with
/// `ignore_bad_entries`, one report and nothing read from the good lines either.
#[test]
fn a_line_that_is_not_text_among_good_lines_is_a_bad_header_whole() {
    let mut carrier = Lines::text(["tenant=acme", "port=8080"]);
    carrier
        .0
        .insert(1, ("baggage".to_string(), Err(b"region=\xffeu".to_vec())));
    assert_eq!(
        Extractor::new().extract(&carrier).unwrap_err(),
        BaggageError::NotText
    );
    assert_eq!(
        Extractor::new()
            .only_keys(["tenant"])
            .extract(&carrier)
            .unwrap_err(),
        BaggageError::NotText
    );
    let (reported, report) = recording();
    let mut context = Extractor::new()
        .ignore_bad_entries(report)
        .extract(&carrier)
        .unwrap();
    assert_eq!(context.run(|| (TENANT.get(), PORT.get())), (None, None));
    assert_eq!(*reported.lock().unwrap(), [BaggageError::NotText]);
}

/// A key given 180 times (the entry limit) is valid: the last entry wins, for a variable's
/// key and for an unclaimed one, and only that entry is forwarded, as it came; once more (181
/// entries) it is over the limit like any 181 entries.
#[test]
fn a_key_repeated_up_to_the_entry_limit_is_read_once_with_its_last_value() {
    let repeated = |key: &str, n: usize| {
        (0..n)
            .map(|i| format!("{key}=v{i}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let carrier = Lines::text([repeated("tenant", MAX_ENTRIES)]);
    let mut context = Extractor::new().extract(&carrier).unwrap();
    assert_eq!(context.run(|| TENANT.get()).as_deref(), Some("v179"));

    let carrier = Lines::text([repeated("campaign", MAX_ENTRIES)]);
    let mut context = Extractor::new().extract(&carrier).unwrap();
    let mut out = HashMap::new();
    context.run(|| inject_into(&mut out));
    assert_eq!(out["baggage"], "campaign=v179");
    assert_eq!(
        context.run(|| get_metadata("campaign")).as_deref(),
        Some("v179")
    );

    // Spread over 180 lines, one entry each: the same.
    let carrier = Lines::text((0..MAX_ENTRIES).map(|i| format!("port={}", 1000 + i)));
    let mut context = Extractor::new().extract(&carrier).unwrap();
    assert_eq!(context.run(|| PORT.get()), Some(1179));

    let carrier = Lines::text([repeated("tenant", MAX_ENTRIES + 1)]);
    assert_eq!(
        Extractor::new().extract(&carrier).unwrap_err(),
        BaggageError::TooManyEntries {
            entries: MAX_ENTRIES + 1
        }
    );
}

/// An entry bad only in its variable's type (`port=70000` for a `u16`; `port=-1`;
/// `port=%2080`, which decodes to " 80") is an error naming `port`, never a truncated or
/// wrapped port; with `ignore_bad_entries` it is skipped and reported, the others are read,
/// and of a key repeated the last good entry wins whichever side the bad ones are on (one
/// good entry among 179 bad ones too).
#[test]
fn an_entry_bad_only_in_its_type_is_refused_or_skipped_never_truncated() {
    for bad in ["port=70000", "port=-1", "port=%2080", "port=65536"] {
        let err = Extractor::new()
            .extract(&Lines::text([format!("tenant=acme,{bad}")]))
            .unwrap_err();
        assert!(
            matches!(&err, BaggageError::BadValue { key, .. } if key == "port"),
            "{bad}: {err:?}"
        );
    }
    let (reported, report) = recording();
    let extractor = Extractor::new().ignore_bad_entries(report);
    let mut context = extractor
        .extract(&Lines::text(["tenant=acme,port=70000"]))
        .unwrap();
    assert_eq!(
        context.run(|| (TENANT.get(), PORT.get())),
        (Some("acme".to_string()), None)
    );
    for header in ["port=70000,port=8080", "port=8080,port=70000"] {
        let mut context = extractor.extract(&Lines::text([header])).unwrap();
        assert_eq!(context.run(|| PORT.get()), Some(8080), "{header}");
    }
    // One good entry, then 179 entries bad in type.
    let mut header = vec!["port=443".to_string()];
    header.extend((1..MAX_ENTRIES).map(|i| format!("port={}", 70_000 + i)));
    let mut context = extractor.extract(&Lines::text([header.join(",")])).unwrap();
    assert_eq!(context.run(|| PORT.get()), Some(443));
    let reported = std::mem::take(&mut *reported.lock().unwrap());
    assert_eq!(reported.len(), 1 + 2 + (MAX_ENTRIES - 1));
    assert!(reported.iter().all(|err| err.key() == Some("port")));
}

/// A report callback that panics: the panic reaches the caller of `extract`, the caller's
/// context is as it was (its values, no metadata from the carrier, still writable), and the
/// extractor keeps working for the next message.
#[test]
fn a_report_callback_that_panics_leaves_the_caller_and_the_extractor_intact() {
    let extractor = Extractor::new().ignore_bad_entries(|err: &BaggageError| {
        assert_ne!(err.key(), Some("port"), "the report panics");
    });
    let _tenant = TENANT.scoped("caller".to_string());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        extractor.extract(&Lines::text(["campaign=spring,tenant=acme,port=70000"]))
    }));
    assert!(panicked.is_err());
    assert_eq!(TENANT.get().as_deref(), Some("caller"));
    assert_eq!(get_metadata("campaign"), None);
    assert_eq!(PORT.get(), None);
    // Still the caller's context, and writable.
    {
        let _port = PORT.scoped(1);
        assert_eq!(PORT.get(), Some(1));
    }
    let mut context = extractor
        .extract(&Lines::text(["campaign=autumn,port=80"]))
        .unwrap();
    assert_eq!(
        context.run(|| (TENANT.get(), PORT.get(), get_metadata("campaign"))),
        (
            Some("caller".to_string()),
            Some(80),
            Some("autumn".to_string())
        )
    );
}

/// A report callback that itself extracts another carrier (with the same extractor) and
/// sets a variable: no deadlock, the inner extraction reads its own carrier, and the
/// caller's context is untouched by either (`extract` never sets anything in it).
#[test]
fn a_report_callback_that_extracts_and_sets_leaves_the_caller_untouched() {
    static EXTRACTOR: OnceLock<Extractor> = OnceLock::new();
    static INNER: Mutex<Vec<(Option<String>, Option<u16>)>> = Mutex::new(Vec::new());
    let extractor = EXTRACTOR.get_or_init(|| {
        Extractor::new().ignore_bad_entries(|err: &BaggageError| {
            if err.key() != Some("port") {
                return;
            }
            let inner = EXTRACTOR
                .get()
                .unwrap()
                .extract(&Lines::text(["tenant=inner,port=7"]));
            let seen = inner.unwrap().run(|| (TENANT.get(), PORT.get()));
            INNER.lock().unwrap().push(seen);
            let _ = PORT.try_set(9);
        })
    });
    let _tenant = TENANT.scoped("caller".to_string());
    let mut outer = extractor
        .extract(&Lines::text(["campaign=spring,port=70000"]))
        .unwrap();
    // The caller's own value wins in the inner copy too.
    assert_eq!(
        *INNER.lock().unwrap(),
        [(Some("caller".to_string()), Some(7))]
    );
    assert_eq!(TENANT.get().as_deref(), Some("caller"));
    assert_eq!(PORT.get(), None);
    assert_eq!(get_metadata("campaign"), None);
    assert_eq!(
        outer.run(|| get_metadata("campaign")).as_deref(),
        Some("spring")
    );
}

/// One extractor (`only_keys`, `forward_unclaimed(false)`, `ignore_bad_entries`) shared by 8
/// threads extracting at once, each message with its own values and one entry bad in type:
/// every extraction reads exactly its own message, never another thread's, unlisted keys
/// are never read, unclaimed entries are not forwarded, and every bad entry is reported once.
#[test]
fn one_extractor_shared_by_many_threads_keeps_each_message_its_own() {
    static REPORTED: AtomicUsize = AtomicUsize::new(0);
    let extractor = Arc::new(
        Extractor::new()
            .only_keys(["tenant", "port", "campaign"])
            .forward_unclaimed(false)
            .ignore_bad_entries(|err: &BaggageError| {
                assert_eq!(err.key(), Some("port"));
                REPORTED.fetch_add(1, Ordering::SeqCst);
            }),
    );
    let per_thread = 400_usize;
    let threads: Vec<_> = (0..8_usize)
        .map(|t| {
            let extractor = Arc::clone(&extractor);
            std::thread::spawn(move || {
                for n in 0..per_thread {
                    let id = t * per_thread + n;
                    // Some messages spread their entries over several lines.
                    let entries = [
                        format!("tenant=t{id}"),
                        format!("port={}", 70_000 + id),
                        format!("campaign=c{id}"),
                        format!("secret=s{id}"),
                        format!("port={}", id % 60_000),
                    ];
                    let carrier = if id % 2 == 0 {
                        Lines::text([entries.join(",")])
                    } else {
                        Lines::text(entries)
                    };
                    let mut context = extractor.extract(&carrier).unwrap();
                    let (tenant, port, campaign, secret, forwarded) = context.run(|| {
                        let mut out = HashMap::new();
                        inject_into(&mut out);
                        (
                            TENANT.get(),
                            PORT.get(),
                            get_metadata("campaign"),
                            get_metadata("secret"),
                            out.remove("baggage").unwrap_or_default(),
                        )
                    });
                    assert_eq!(tenant, Some(format!("t{id}")));
                    assert_eq!(port, Some(u16::try_from(id % 60_000).unwrap()));
                    assert_eq!(campaign, Some(format!("c{id}")));
                    assert_eq!(secret, None);
                    assert!(!forwarded.contains("campaign"), "{forwarded}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(REPORTED.load(Ordering::SeqCst), 8 * per_thread);
}

/// A report callback runs while the copy is being filled: a snapshot it takes there
/// (`Context::current()`) is a context of its own, which the entries written after it (the
/// good `tenant` and `campaign`) must not reach, while the returned context has them.
#[test]
fn a_snapshot_taken_by_a_report_callback_is_not_written_by_the_rest_of_the_extraction() {
    static STASHED: Mutex<Vec<contextvars::Context>> = Mutex::new(Vec::new());
    let extractor = Extractor::new().ignore_bad_entries(|_: &BaggageError| {
        STASHED
            .lock()
            .unwrap()
            .push(contextvars::Context::current());
    });
    let mut context = extractor
        .extract(&Lines::text(["port=70000,tenant=acme,campaign=spring"]))
        .unwrap();
    assert_eq!(
        context.run(|| (TENANT.get(), get_metadata("campaign"))),
        (Some("acme".to_string()), Some("spring".to_string()))
    );
    let mut stashed = STASHED.lock().unwrap().pop().unwrap();
    assert_eq!(
        stashed.run(|| (TENANT.get(), get_metadata("campaign"))),
        (None, None)
    );
    assert_eq!(stashed.len(), 0);
}

/// `only_keys` leaves other keys unread but not unchecked against the header's limits: 181
/// entries of an unlisted key are still too many, while 180 entries of it are no error and
/// set nothing.
#[test]
fn only_keys_does_not_lift_the_entry_limit_for_unlisted_keys() {
    let extractor = Extractor::new().only_keys(["tenant"]);
    let unlisted = |n: usize| {
        let mut entries: Vec<String> = (0..n).map(|i| format!("secret=s{i}")).collect();
        entries[0] = "tenant=acme".to_string();
        Lines::text([entries.join(",")])
    };
    let mut context = extractor.extract(&unlisted(MAX_ENTRIES)).unwrap();
    assert_eq!(
        context.run(|| (TENANT.get(), get_metadata("secret"))),
        (Some("acme".to_string()), None)
    );
    assert_eq!(
        extractor.extract(&unlisted(MAX_ENTRIES + 1)).unwrap_err(),
        BaggageError::TooManyEntries {
            entries: MAX_ENTRIES + 1
        }
    );
}
