//! The metadata map: copy-on-write in the context (a snapshot taken before a set never sees
//! it), sorted by key, with flags kept per entry; checked entry by entry, and against a
//! `BTreeMap` model over random programs of sets, removes and snapshots.

use std::collections::BTreeMap;

use contextvars::Context;
use contextvars::metadata::{
    MetadataFlags, get_all_metadata, get_metadata, metadata_flags, remove_metadata, set_metadata,
    set_metadata_with,
};
use proptest::prelude::*;

/// What the current context's metadata holds: every entry with its flags, in the order the
/// library gives them.
fn observe() -> Vec<(String, String, MetadataFlags)> {
    get_all_metadata()
        .into_iter()
        .map(|(key, value)| {
            let flags = metadata_flags(&key).expect("a listed key has flags");
            (key, value, flags)
        })
        .collect()
}

#[test]
fn a_snapshot_taken_before_sets_and_removes_keeps_its_map() {
    Context::new().run(|| {
        for i in 0..2_000 {
            set_metadata(format!("key{i:04}"), format!("v{i}"));
        }
        let before = observe();
        let mut snapshot = Context::current();

        set_metadata("key0500", "changed");
        set_metadata_with("key1000", "logged", MetadataFlags::LOG);
        set_metadata("key9999", "new");
        assert_eq!(remove_metadata("key1500").as_deref(), Some("v1500"));
        for i in 0..100 {
            remove_metadata(&format!("key{i:04}"));
        }

        // The snapshot's map is untouched, entry by entry and flag by flag.
        assert_eq!(snapshot.run(observe), before);
        // The current one has every change.
        assert_eq!(get_metadata("key0500").as_deref(), Some("changed"));
        assert_eq!(metadata_flags("key1000"), Some(MetadataFlags::LOG));
        assert_eq!(get_metadata("key9999").as_deref(), Some("new"));
        assert_eq!(get_metadata("key1500"), None);
        assert_eq!(get_metadata("key0050"), None);
        assert_eq!(get_all_metadata().len(), 2_000 + 1 - 1 - 100);
    });
}

#[test]
fn sets_in_a_snapshot_stay_in_the_snapshot() {
    Context::new().run(|| {
        for i in 0..300 {
            set_metadata(format!("k{i}"), "caller");
        }
        let before = observe();
        let mut snapshot = Context::current();
        snapshot.run(|| {
            for i in (0..600).step_by(7) {
                set_metadata(format!("k{i}"), "snapshot");
            }
            remove_metadata("k1");
        });
        assert_eq!(observe(), before);
        assert_eq!(
            snapshot.run(|| get_metadata("k7")).as_deref(),
            Some("snapshot")
        );
        assert_eq!(snapshot.run(|| get_metadata("k1")), None);
    });
}

#[test]
fn entries_come_sorted_by_key_whatever_the_order_they_were_set_in() {
    Context::new().run(|| {
        let keys = ["m", "b", "z", "a", "q", "c", "y", "d"];
        for (i, key) in keys.iter().enumerate() {
            set_metadata(*key, i.to_string());
        }
        let listed: Vec<_> = get_all_metadata().into_keys().collect();
        let mut sorted: Vec<_> = keys.iter().map(ToString::to_string).collect();
        sorted.sort();
        assert_eq!(listed, sorted);
    });
}

#[derive(Clone, Debug)]
enum Op {
    Set(u8, u8, MetadataFlags),
    Remove(u8),
    /// Keeps a snapshot of the current context, checked at the end against the model then.
    Snapshot,
    /// Runs the rest of the program in a copy of the current context, then checks that the
    /// caller's map is what it was.
    Nest(Vec<Op>),
}

fn flags() -> impl Strategy<Value = MetadataFlags> {
    prop_oneof![
        Just(MetadataFlags::NONE),
        Just(MetadataFlags::LOG),
        Just(MetadataFlags::BAGGAGE),
        Just(MetadataFlags::LOG | MetadataFlags::BAGGAGE),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Few distinct keys, so that sets replace and removes hit.
    let leaf = prop_oneof![
        6 => (0..40_u8, any::<u8>(), flags()).prop_map(|(k, v, f)| Op::Set(k, v, f)),
        3 => (0..40_u8).prop_map(Op::Remove),
        1 => Just(Op::Snapshot),
    ];
    leaf.prop_recursive(3, 200, 40, |inner| {
        prop::collection::vec(inner, 0..40).prop_map(Op::Nest)
    })
}

type Model = BTreeMap<String, (String, MetadataFlags)>;

fn expected(model: &Model) -> Vec<(String, String, MetadataFlags)> {
    model
        .iter()
        .map(|(k, (v, f))| (k.clone(), v.clone(), *f))
        .collect()
}

/// Runs `ops` in the current context and on `model`; keeps the snapshots with the model's
/// state when each was taken.
fn play(ops: &[Op], model: &mut Model, snapshots: &mut Vec<(Context, Model)>) {
    for op in ops {
        match op {
            Op::Set(key, value, flags) => {
                let (key, value) = (format!("key-{key}"), value.to_string());
                set_metadata_with(key.clone(), value.clone(), *flags);
                model.insert(key, (value, *flags));
            }
            Op::Remove(key) => {
                let key = format!("key-{key}");
                let removed = remove_metadata(&key);
                assert_eq!(removed, model.remove(&key).map(|(value, _)| value));
            }
            Op::Snapshot => snapshots.push((Context::current(), model.clone())),
            Op::Nest(ops) => {
                let before = observe();
                let mut inner_model = model.clone();
                Context::current().run(|| play(ops, &mut inner_model, snapshots));
                assert_eq!(
                    observe(),
                    before,
                    "a nested context's sets reached its caller"
                );
            }
        }
        assert_eq!(observe(), expected(model));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn metadata_behaves_as_a_btreemap_copied_at_each_snapshot(
        ops in prop::collection::vec(op(), 0..120),
    ) {
        Context::new().run(|| {
            let mut model = Model::new();
            let mut snapshots = Vec::new();
            play(&ops, &mut model, &mut snapshots);
            for (mut snapshot, model) in snapshots {
                assert_eq!(snapshot.run(observe), expected(&model));
            }
        });
    }
}
