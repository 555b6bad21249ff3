//! Two variables that claim one baggage key: the server could not tell which one an entry
//! sets, so building the layer panics, naming both.

mod billing {
    #[contextvars::context_var(baggage = "account")]
    pub(crate) static ACCOUNT: String;
}

mod crm {
    #[contextvars::context_var(baggage = "account")]
    pub(crate) static ACCOUNT: u64;
}

#[test]
fn a_key_claimed_twice_is_refused_when_the_layer_is_built() {
    let _ = (&billing::ACCOUNT, &crm::ACCOUNT);
    let panic = std::panic::catch_unwind(|| {
        let _ = contextvars::tower::ContextLayer::new().accept_baggage();
    })
    .expect_err("building the layer must panic");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("`account` is claimed by two variables"),
        "{message}"
    );
    for claimant in [
        "test_baggage_conflict::billing::ACCOUNT",
        "test_baggage_conflict::crm::ACCOUNT",
    ] {
        assert!(message.contains(claimant), "{message}");
    }
}
