use contextvars::context_var;

#[context_var(baggage = "tenant")]
static TENANT: String;

#[context_var(baggage = "user_id")]
static USER_ID: u64;

#[test]
fn claimed() {
    assert_eq!(
        contextvars::baggage::claimed_keys(),
        [("tenant", "TENANT"), ("user_id", "USER_ID")]
    );
}
