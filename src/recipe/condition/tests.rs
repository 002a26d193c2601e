use super::*;
use proptest::prelude::*;
use serde_json::json;

/// Compiles `cond`, evaluates it against `ctx` and compares.
#[track_caller]
fn check(cond: Value, ctx: &Value, expected: bool) {
    let compiled = match Condition::compile(&cond) {
        Ok(c) => c,
        Err(e) => panic!("{cond} failed to compile at {:?}: {}", e.pointer, e.message),
    };
    assert_eq!(compiled.eval(ctx), expected, "condition {cond} on {ctx}");
}

/// Compiles `cond`, expecting an error at `pointer` whose message contains
/// `message`.
#[track_caller]
fn check_err(cond: Value, pointer: &str, message: &str) {
    match Condition::compile(&cond) {
        Ok(_) => panic!("{cond} compiled, expected an error at {pointer:?}"),
        Err(e) => {
            assert_eq!(e.pointer, pointer, "pointer for {cond}: {}", e.message);
            assert!(
                e.message.contains(message),
                "message for {cond}: {:?} lacks {message:?}",
                e.message
            );
        }
    }
}

fn ctx() -> Value {
    json!({
        "event": {
            "ticket": {
                "id": "42",
                "number": 7,
                "subject": "Setup mail never came",
                "priority": "high",
                "status": "open",
                "tags": ["vip", "billing"],
                "via": { "channel": "email" },
                "assignee": null,
                "score": 4.5,
                "created": "2024-05-01T10:00:00Z",
            },
            "tags": ["a", "b", "c"],
            "items": [ { "sku": "x", "qty": 1 }, { "sku": "y", "qty": 3 }, { "sku": "z", "qty": "5" } ],
        },
        "steps": { "contact": { "lifecycle": "pending", "id": 42 } },
        "vars": {},
    })
}

#[test]
fn each_operator_true_and_false() {
    let ctx = ctx();
    let t = |op: &str, operand: Value| json!({ "$.event.ticket.subject": { op: operand } });
    let cases = [
        (t("equals", json!("Setup mail never came")), true),
        (t("equals", json!("setup")), false),
        (t("not_equals", json!("setup")), true),
        (t("not_equals", json!("Setup mail never came")), false),
        (t("in", json!(["x", "Setup mail never came"])), true),
        (t("in", json!(["x", "y"])), false),
        (t("in", json!([])), false),
        (t("contains", json!("mail")), true),
        (t("contains", json!("Mail")), false),
        (t("matches", json!("(?i)setup|confirm")), true),
        (t("matches", json!("^confirm")), false),
        (t("exists", json!(true)), true),
        (t("exists", json!(false)), false),
        (t("starts_with", json!("Setup")), true),
        (t("starts_with", json!("mail")), false),
        (t("ends_with", json!("came")), true),
        (t("ends_with", json!("Setup")), false),
        // Two non-numeric strings compare lexicographically.
        (t("gt", json!("Apple")), true),
        (t("gt", json!("Zebra")), false),
        (t("gte", json!("Setup mail never came")), true),
        (t("lt", json!("Zebra")), true),
        (t("lt", json!("Apple")), false),
        (t("lte", json!("Setup mail never came")), true),
    ];
    for (cond, expected) in cases {
        check(cond, &ctx, expected);
    }
    let n = |op: &str, operand: Value| json!({ "$.event.ticket.number": { op: operand } });
    for (cond, expected) in [
        (n("gt", json!(6)), true),
        (n("gt", json!(7)), false),
        (n("gte", json!(7)), true),
        (n("gte", json!(7.5)), false),
        (n("lt", json!(10)), true),
        (n("lt", json!(7)), false),
        (n("lte", json!(7.0)), true),
        (n("lte", json!(6.99)), false),
        // A number never orders against a word.
        (n("gt", json!("abc")), false),
        (n("lt", json!("abc")), false),
        // String operators see a number through its JSON text.
        (n("starts_with", json!("7")), true),
        (n("matches", json!("^\\d+$")), true),
    ] {
        check(cond, &ctx, expected);
    }
    // Array `contains` is element equality; string `contains` never looks
    // inside an array.
    for (cond, holds) in [
        (
            json!({ "$.event.ticket.tags": { "contains": "vip" } }),
            true,
        ),
        (
            json!({ "$.event.ticket.tags": { "contains": "vi" } }),
            false,
        ),
        (
            json!({ "$.event.ticket.via": { "contains": "email" } }),
            false,
        ),
        (
            json!({ "$.event.ticket.tags": { "contains": ["vip"] } }),
            false,
        ),
        (json!({ "$.event": { "contains": "x" } }), false),
    ] {
        check(cond, &ctx, holds);
    }
    // ISO-8601 timestamps in one format order lexicographically.
    check(
        json!({ "$.event.ticket.created": { "gt": "2024-04-30T23:59:59Z", "lt": "2024-05-02" } }),
        &ctx,
        true,
    );
}

#[test]
fn several_operators_on_one_path_must_all_hold() {
    let ctx = ctx();
    let lifecycle = |ops: Value| json!({ "$.steps.contact.lifecycle": ops });
    let number = |ops: Value| json!({ "$.event.ticket.number": ops });
    check(
        lifecycle(json!({ "equals": "pending", "exists": true })),
        &ctx,
        true,
    );
    check(
        lifecycle(json!({ "equals": "pending", "starts_with": "x" })),
        &ctx,
        false,
    );
    check(number(json!({ "gt": 1, "lt": 5 })), &ctx, false);
    check(number(json!({ "gt": 1, "lt": 10 })), &ctx, true);
    // Several paths in one map: all hold.
    check(
        json!({ "$.event.ticket.priority": { "equals": "high" }, "$.event.ticket.status": { "equals": "closed" } }),
        &ctx,
        false,
    );
}

#[test]
fn missing_path_only_passes_exists_false_and_not_equals() {
    let ctx = ctx();
    let cases = [
        ("equals", json!("x"), false),
        ("equals", json!(null), false),
        ("not_equals", json!("x"), true),
        ("not_equals", json!(null), true),
        ("in", json!(["x", null]), false),
        ("contains", json!("x"), false),
        ("matches", json!(".*"), false),
        ("exists", json!(true), false),
        ("exists", json!(false), true),
        ("gt", json!(0), false),
        ("gte", json!(""), false),
        ("lt", json!(0), false),
        ("lte", json!("zzz"), false),
        ("starts_with", json!(""), false),
        ("ends_with", json!(""), false),
    ];
    for (op, operand, expected) in cases {
        check(
            json!({ "$.event.ticket.nope": { op: operand.clone() } }),
            &ctx,
            expected,
        );
        // A missing parent is just as missing.
        check(
            json!({ "$.event.nope.deeper[0]": { op: operand } }),
            &ctx,
            expected,
        );
    }
}

#[test]
fn null_is_present_and_equals_only_null() {
    let ctx = ctx();
    let a = |op: &str, operand: Value| json!({ "$.event.ticket.assignee": { op: operand } });
    check(a("exists", json!(true)), &ctx, true);
    check(a("equals", json!(null)), &ctx, true);
    check(a("in", json!([null])), &ctx, true);
    check(a("equals", json!("")), &ctx, false);
    check(a("equals", json!(0)), &ctx, false);
    check(a("equals", json!(false)), &ctx, false);
    check(a("not_equals", json!(null)), &ctx, false);
    check(a("not_equals", json!("bob")), &ctx, true);
    check(a("contains", json!("")), &ctx, false);
    check(a("lt", json!(1)), &ctx, false);
    check(a("starts_with", json!("")), &ctx, false);
}

#[test]
fn several_nodes_pass_if_any_node_passes() {
    let ctx = ctx();
    let w = |op: &str, operand: Value| json!({ "$.event.tags[*]": { op: operand } });
    check(w("equals", json!("b")), &ctx, true);
    check(w("equals", json!("d")), &ctx, false);
    check(w("in", json!(["d", "c"])), &ctx, true);
    check(w("matches", json!("^[bc]$")), &ctx, true);
    check(w("gt", json!("b")), &ctx, true);
    check(w("gt", json!("c")), &ctx, false);
    check(w("exists", json!(true)), &ctx, true);
    check(w("exists", json!(false)), &ctx, false);
    // `not_equals` must hold for every node.
    check(w("not_equals", json!("b")), &ctx, false);
    check(w("not_equals", json!("d")), &ctx, true);
    // An empty array selects nothing: missing.
    let empty = json!({ "event": { "tags": [] } });
    check(w("exists", json!(false)), &empty, true);
    check(w("not_equals", json!("a")), &empty, true);
    check(w("equals", json!("a")), &empty, false);
    // Descendants.
    check(json!({ "$..qty": { "gte": 5 } }), &ctx, true);
    check(json!({ "$..qty": { "gt": 5 } }), &ctx, false);
}

#[test]
fn numbers_equal_numeric_strings() {
    let ctx = ctx();
    let id = |op: &str, operand: Value| json!({ "$.event.ticket.id": { op: operand } });
    let contact = |op: &str, operand: Value| json!({ "$.steps.contact.id": { op: operand } });
    // The id arrives as "42"; YAML authors write 42.
    check(id("equals", json!(42)), &ctx, true);
    check(id("equals", json!(42.0)), &ctx, true);
    check(id("equals", json!(43)), &ctx, false);
    check(id("not_equals", json!(42)), &ctx, false);
    check(id("in", json!([1, 42])), &ctx, true);
    check(
        json!({ "$.event.ticket.id": { "gt": 41.5, "lt": "100" } }),
        &ctx,
        true,
    );
    // And the other way round.
    check(contact("equals", json!("42")), &ctx, true);
    check(contact("equals", json!("42.0")), &ctx, true);
    check(contact("equals", json!("042")), &ctx, false);
    check(contact("equals", json!(" 42")), &ctx, false);
    check(contact("equals", json!("4.2e1")), &ctx, true);
    // Two strings compare as strings, numerically ordered when both are numeric.
    check(id("equals", json!("42.0")), &ctx, false);
    check(id("gt", json!("9")), &ctx, true);
    check(id("lt", json!("9")), &ctx, false);
    // Inside arrays, big integers exactly, and booleans are not numbers:
    // (operator, operand, `event.x`, holds).
    for (op, operand, x, holds) in [
        ("contains", json!(1), json!(["1"]), true),
        ("contains", json!(1), json!([["1"], "2"]), false),
        (
            "equals",
            json!([1, { "a": "2" }]),
            json!(["1", { "a": 2 }]),
            true,
        ),
        (
            "equals",
            json!(9007199254740993u64),
            json!("9007199254740992"),
            false,
        ),
        ("gt", json!(-1), json!(u64::MAX), true),
        ("equals", json!(1), json!(true), false),
    ] {
        let cond = json!({ "$.event.x": { op: operand } });
        check(cond, &json!({ "event": { "x": x } }), holds);
    }
}

#[test]
fn combinators_nest() {
    let ctx = ctx();
    let cond = json!([
        { "$.event.ticket.subject": { "matches": "(?i)setup|confirm" } },
        { "$.event.ticket.priority": { "in": ["high", "urgent"] } },
        { "any": [
            { "$.event.ticket.tags": { "contains": "nobody" } },
            { "$.event.ticket.via.channel": { "not_equals": "chat" } },
        ] },
        { "not": { "$.event.ticket.status": { "equals": "closed" } } },
        { "all": [ { "$.vars": { "exists": true } }, [ { "$.steps.contact": { "exists": true } } ] ] },
    ]);
    check(cond.clone(), &ctx, true);
    let mut closed = ctx.clone();
    closed["event"]["ticket"]["status"] = json!("closed");
    check(cond.clone(), &closed, false);
    let mut chat = ctx.clone();
    chat["event"]["ticket"]["via"]["channel"] = json!("chat");
    check(cond, &chat, false);
    for (cond, holds) in [
        (
            json!({ "not": { "not": { "$.event": { "exists": true } } } }),
            true,
        ),
        (
            json!({ "not": [ { "$.event": { "exists": true } }, { "$.nope": { "exists": true } } ] }),
            true,
        ),
        (
            json!({ "any": [ { "$.a": { "exists": true } }, { "$.b": { "exists": true } } ] }),
            false,
        ),
        (
            json!({ "all": [ { "$.event": { "exists": true } } ], "any": [ { "$.b": { "exists": false } } ] }),
            true,
        ),
    ] {
        check(cond, &ctx, holds);
    }
    assert!(Condition::always().eval(&ctx));
    assert!(Condition::always().eval(&Value::Null));
}

#[test]
fn filter_paths_use_rfc_9535_syntax() {
    let ctx = ctx();
    // qty 3 passes; qty "5" is a string, which RFC 9535 does not order against 2.
    for (cond, holds) in [
        (
            json!({ "$.event.items[?@.qty > 2].sku": { "equals": "y" } }),
            true,
        ),
        (
            json!({ "$.event.items[?@.qty > 2].sku": { "in": ["z"] } }),
            false,
        ),
        (
            json!({ "$.event.items[?@.qty > 2]": { "exists": true } }),
            true,
        ),
        (
            json!({ "$.event.items[?@.qty > 99]": { "exists": false } }),
            true,
        ),
        (
            json!({ "$.event.items[?@.sku == 'z'].qty": { "equals": 5 } }),
            true,
        ),
        (
            json!({ "$.event.items[?match(@.sku, '[xy]')].qty": { "lt": 2 } }),
            true,
        ),
        (
            json!({ "$.event.items[?@.qty == $.steps.contact.id]": { "exists": true } }),
            false,
        ),
    ] {
        check(cond, &ctx, holds);
    }
}

#[test]
fn compile_errors_point_at_the_problem() {
    let ok = json!({ "$.event.x": { "equals": 1 } });
    let cases = [
        (json!([ok, { "$.event.x": { "matches": "(" } }]), "/1/$.event.x/matches", "invalid regex `(`"),
        (json!({ "$.event.x": { "matches": 5 } }), "/$.event.x/matches", "`matches` expects a regex string, found a number"),
        (json!({ "$.event.x": { "matches": "(?:\\w{100}){100}" } }), "/$.event.x/matches", "size limit"),
        (json!({ "$.event.x": { "equal": 1 } }), "/$.event.x/equal", "unknown operator `equal`, expected one of equals, not_equals, in, contains, matches, exists, gt, gte, lt, lte, starts_with, ends_with (did you mean `equals`?)"),
        (json!({ "$.event.x": { "startswith": "a" } }), "/$.event.x/startswith", "(did you mean `starts_with`?)"),
        (json!({ "$.event.x": { "frobnicate": 1 } }), "/$.event.x/frobnicate", "unknown operator `frobnicate`, expected one of equals"),
        (json!([ok, { "$.event[": { "equals": 1 } }]), "/1/$.event[", "invalid JSONPath `$.event[`: expected selector at column 9"),
        (json!({ "$.a/b~c[": { "equals": 1 } }), "/$.a~1b~0c[", "invalid JSONPath"),
        (json!({ "$.event.x": { "in": "high" } }), "/$.event.x/in", "`in` expects a list, found a string"),
        (json!({ "$.event.x": { "exists": "yes" } }), "/$.event.x/exists", "`exists` expects true or false"),
        (json!({ "$.event.x": { "gt": [1] } }), "/$.event.x/gt", "`gt` expects a number or a string"),
        (json!({ "$.event.x": { "lte": null } }), "/$.event.x/lte", "`lte` expects a number or a string"),
        (json!({ "$.event.x": { "starts_with": true } }), "/$.event.x/starts_with", "`starts_with` expects a string, found a boolean"),
        (json!({ "$.event.x": { "ends_with": {} } }), "/$.event.x/ends_with", "`ends_with` expects a string"),
        (json!({ "$.event.x": {} }), "/$.event.x", "has no operators"),
        (json!({ "$.event.x": "pending" }), "/$.event.x", "expects a map of operators"),
        (json!({ "event.x": { "equals": 1 } }), "/event.x", "a condition key must be a JSONPath starting with `$` or one of all, any, not, within_business_hours (did you mean `$.event.x`?)"),
        (json!({ "alll": [ok] }), "/alll", "(did you mean `all`?)"),
        (json!({ "or": [ok] }), "/or", "(did you mean `any`?)"),
        (json!({ "equals": 1 }), "/equals", "`equals` is an operator"),
        (json!({ "hello": 1 }), "/hello", "a condition key must be a JSONPath starting with `$` or one of all, any, not"),
        (json!([ok, { "all": [] }]), "/1/all", "`all` expects a non-empty list"),
        (json!({ "any": [] }), "/any", "`any` expects a non-empty list"),
        (json!({ "any": ok }), "/any", "`any` expects a non-empty list"),
        (json!({ "any": [ok, { "not": { "$.x": { "equals": 1, "matches": "[" } } }] }), "/any/1/not/$.x/matches", "invalid regex"),
        (json!({ "not": [] }), "/not", "must not be empty"),
        (json!({ "not": 3 }), "/not", "expected a condition"),
        (json!([]), "", "must not be empty"),
        (json!({}), "", "must not be empty"),
        (json!([ok, {}]), "/1", "must not be empty"),
        (json!("$.event.x"), "", "expected a condition"),
        (json!(null), "", "expected a condition"),
        (json!([[ok, 1]]), "/0/1", "expected a condition"),
    ];
    for (cond, pointer, message) in cases {
        check_err(cond, pointer, message);
    }
    let mut deep = ok;
    for _ in 0..100 {
        deep = json!({ "not": deep });
    }
    check_err(deep, &"/not".repeat(65), "nested too deeply");
}

#[test]
fn within_business_hours_asks_the_calendar() {
    let cals = crate::time::calendar::compile_all(&json!({"eu": {
        "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}
    }}))
    .unwrap();
    let mut c = Condition::compile(&json!([
        {"within_business_hours": "eu"},
        {"not": {"within_business_hours": {"calendar": "eu", "at": "$.event.at"}}}
    ]))
    .unwrap();
    assert!(c.bind_calendars(&cals).is_empty());
    // Monday 10:00 Berlin now; the event's time is Sunday.
    let ctx =
        json!({"run": {"now": "2025-12-01T09:00:00Z"}, "event": {"at": "2025-11-30T10:00:00Z"}});
    assert!(c.eval(&ctx));
    let ctx =
        json!({"run": {"now": "2025-12-01T09:00:00Z"}, "event": {"at": "2025-12-01T10:00:00Z"}});
    assert!(!c.eval(&ctx));
    // No clock, or an unreadable time: not within business hours.
    let plain = Condition::compile(&json!({"within_business_hours": "eu"})).unwrap();
    assert!(!plain.eval(&json!({"run": {}})), "unbound");
    let mut bad = Condition::compile(&json!({"within_business_hours": "us"})).unwrap();
    let errs = bad.bind_calendars(&cals);
    assert_eq!(errs[0].0, "/within_business_hours");
    assert!(errs[0].1.contains("unknown calendar `us`"), "{errs:?}");
    check_err(
        json!({"within_business_hours": {"calendar": "eu", "when": 1}}),
        "/within_business_hours/when",
        "expects a calendar name",
    );
    check_err(
        json!({"within_business_hours": 3}),
        "/within_business_hours",
        "calendar name",
    );
}

#[test]
fn paths_lists_every_jsonpath_with_its_pointer() {
    let cond = Condition::compile(&json!([
        { "$.event.a": { "exists": true } },
        { "any": [ { "$.steps.contact.id": { "equals": 1 } }, { "not": { "$.vars['a/b']": { "exists": true } } } ] },
    ]))
    .unwrap();
    assert_eq!(
        cond.paths(),
        vec![
            ("/0/$.event.a".to_owned(), "$.event.a".to_owned()),
            (
                "/1/any/0/$.steps.contact.id".to_owned(),
                "$.steps.contact.id".to_owned()
            ),
            (
                "/1/any/1/not/$.vars['a~1b']".to_owned(),
                "$.vars['a/b']".to_owned()
            ),
        ]
    );
    assert!(Condition::always().paths().is_empty());
}

/// JSON trees whose keys mix operators, combinators, JSONPath-looking and
/// arbitrary strings.
fn arb_tree() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("all".to_owned()),
        Just("any".to_owned()),
        Just("not".to_owned()),
        proptest::sample::select(operator_names()).prop_map(str::to_owned),
        "\\$[.a-z0-9*\\[\\]?@<>=!'\"(), :$-]{0,16}",
        "\\$\\.(event|steps|vars)(\\.[a-z]{1,3}|\\[[0-9*:-]{1,4}\\]|\\[\\?@\\.[a-z] [<>=!]=? [0-9'a]+\\])*",
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9()\\[\\]*+?.\\\\{},^$|-]{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// Conditions that mostly compile: known paths, known operators,
/// arbitrary operands, nested in combinators.
fn arb_condition() -> impl Strategy<Value = Value> {
    let path = proptest::sample::select(vec![
        "$",
        "$.event",
        "$.event.a",
        "$.event.a[*]",
        "$.event.a[0]",
        "$.event.a[-1]",
        "$.event.a[1:3]",
        "$.event.a[::-1]",
        "$..a",
        "$..*",
        "$.event.a[?@.b > 2]",
        "$.event.a[?@.b == 'x'].c",
        "$.event[?length(@) > 1]",
        "$.event.a[?match(@.b, 'x.*')]",
        "$.steps.*.id",
        "$.vars['a', 'b']",
    ]);
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-c0-9.-]{0,4}".prop_map(Value::String),
    ];
    let text = prop_oneof![
        any::<i64>().prop_map(Value::from),
        "[a-c0-9.-]{0,4}".prop_map(Value::String)
    ];
    let op_operand = prop_oneof![
        (
            proptest::sample::select(vec!["equals", "not_equals", "contains"]),
            scalar.clone()
        ),
        (
            Just("in"),
            prop::collection::vec(scalar, 0..3).prop_map(Value::Array)
        ),
        (Just("matches"), "[a-c.*+?|^$]{0,6}".prop_map(Value::String)),
        (Just("exists"), any::<bool>().prop_map(Value::Bool)),
        (
            proptest::sample::select(vec!["gt", "gte", "lt", "lte", "starts_with", "ends_with"]),
            text
        ),
        (proptest::sample::select(operator_names()), arb_tree()),
    ];
    let leaf = (path, op_operand).prop_map(|(p, (o, v))| json!({ p: { o: v } }));
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "all": v })),
            prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "any": v })),
            inner.clone().prop_map(|c| json!({ "not": c })),
            prop::collection::vec(inner, 1..3).prop_map(Value::Array),
        ]
    })
}

/// Contexts whose values sit under the keys the paths above look at.
fn arb_context() -> impl Strategy<Value = Value> {
    (arb_tree(), arb_tree(), arb_tree()).prop_map(|(a, b, c)| {
        json!({ "event": { "a": a.clone(), "b": b }, "steps": { "s": { "id": c } }, "vars": { "a": a } })
    })
}

proptest! {
    #[test]
    fn compile_never_panics(tree in arb_tree(), ctx in arb_tree()) {
        if let Ok(cond) = Condition::compile(&tree) {
            cond.eval(&ctx);
            cond.paths();
        }
    }

    #[test]
    fn eval_never_panics(cond in arb_condition(), ctx in arb_context()) {
        if let Ok(cond) = Condition::compile(&cond) {
            let _ = cond.eval(&ctx);
            // Evaluation is a pure function of the context.
            prop_assert_eq!(cond.eval(&ctx), cond.eval(&ctx));
        }
    }
}

/// The `matches` ops of `c`, in document order.
fn matches_of(c: &Condition) -> Vec<Matches> {
    let mut out = Vec::new();
    c.root.visit(&mut |op| {
        if let Op::Matches(m) = op {
            out.push(m.clone());
        }
    });
    out
}

/// A `matches` pattern is checked once however many conditions use it,
/// and its regex built once (10,000 recipes with one pattern held 10,000
/// copies); both are freed with the last condition using them.
#[test]
fn conditions_with_the_same_pattern_share_one_regex() {
    let pattern_of = |c: &Condition| matches_of(c)[0].pattern.clone();
    let pattern = "(?i)(shared-pattern-test|confirm)";
    let cond = json!([{ "$.event.subject": { "matches": pattern } }]);
    let a = Condition::compile(&cond).unwrap();
    let b = Condition::compile(&cond).unwrap();
    assert!(Arc::ptr_eq(&pattern_of(&a), &pattern_of(&b)));
    let other = Condition::compile(
        &json!([{ "$.event.subject": { "matches": "(?i)other-pattern-test" } }]),
    )
    .unwrap();
    assert!(!Arc::ptr_eq(&pattern_of(&a), &pattern_of(&other)));
    // Compiling checks the pattern; its regex is built when first needed.
    assert!(pattern_of(&a).regex.get().is_none());
    // Both still match what their own pattern says.
    let ctx = json!({"event": {"subject": "Please CONFIRM"}});
    assert!(a.eval(&ctx) && b.eval(&ctx) && !other.eval(&ctx));
    assert!(pattern_of(&a).regex.get().is_some_and(Option::is_some));
    // Freed with the last condition using it: a later compile builds a new one.
    let weak = Arc::downgrade(&pattern_of(&a));
    drop((a, b));
    assert!(
        weak.upgrade().is_none(),
        "the pattern outlived its conditions"
    );
    let c = Condition::compile(&cond).unwrap();
    assert!(c.eval(&ctx));
}

/// Patterns whose shared regex must answer as each pattern alone: anchors,
/// word boundaries, multi-line, empty matches, case folding, flags that
/// must not leak from one pattern into the next.
const SHARED_PATTERNS: &[&str] = &[
    "(?i)(setup|confirm)",
    "(?i)(setup|confirm|w00042)",
    "^(urgent|high)$",
    "(?P<word>\\w+)@(example|acme)\\.com",
    "(a|)(b)*c",
    "((ab)+|x)y?$",
    "\\b(cat|dog)s?\\b",
    "(?i)straße|(ſetup)",
    "(?s)a(.*?)b",
    "(?m)^(\\d{3})-(\\d{4})$",
    "(?:x(y(z)))+",
    "()",
    "[α-ω]+(\\s|$)",
    "(?i)K",
    "K",
    "^$",
    "\\Bat",
    "a.b",
    "^",
    "$",
];

const SUBJECTS: &[&str] = &[
    "",
    "Please resend my confirmation email",
    "Need help with SETUP",
    "ticket W00042 again",
    "urgent",
    "urgent!",
    "bob@example.com",
    "bob@acme.org",
    "bbbc",
    "c",
    "ababy",
    "xy\n",
    "cats and dogs",
    "concatenate",
    "STRASSE",
    "ſetup",
    "a\nb",
    "555-1234\nline",
    "xyzxyz",
    "λόγος",
    "\u{212a}elvin",
    "kelvin",
    "a\u{212a}b",
    "k",
];

/// The conditions `{"$.s": {matches: P}}` of `patterns`, given to
/// [`share_regexes_from`] as one group with the smallest size `min`.
fn shared(patterns: &[&str], min: usize) -> Vec<Condition> {
    let conds: Vec<Condition> = patterns
        .iter()
        .map(|p| Condition::compile(&json!({ "$.s": { "matches": p } })).unwrap())
        .collect();
    share_regexes_from(&conds, min);
    conds
}

/// [`share_regexes`] compiles many patterns into one regex: each
/// condition still answers as its own pattern does in the `regex` crate.
#[test]
fn shared_regexes_answer_as_each_pattern_alone() {
    let conds = shared(SHARED_PATTERNS, 2);
    let first = matches_of(&conds[0])[0].shared.get().unwrap().0.clone();
    for (p, c) in SHARED_PATTERNS.iter().zip(&conds) {
        let m = &matches_of(c)[0];
        // One regex for them all, and no pattern's own built.
        assert!(Arc::ptr_eq(&m.shared.get().unwrap().0, &first), "{p}");
        assert!(m.pattern.regex.get().is_none(), "{p}");
        let full = regex::Regex::new(p).unwrap();
        for s in SUBJECTS {
            let ctx = json!({ "s": s });
            assert_eq!(c.eval(&ctx), full.is_match(s), "pattern {p:?} on {s:?}");
        }
    }
}

/// Below the smallest group size each pattern gets its own regex, built
/// when the catalog gives the group (not on the first event); a pattern
/// used by several conditions of a group is one pattern of the regex.
#[test]
fn shared_regexes_need_enough_distinct_patterns() {
    let few = shared(&["(?i)few-a", "(?i)few-b", "(?i)few-a"], 3);
    for c in &few {
        let m = &matches_of(c)[0];
        assert!(m.shared.get().is_none());
        assert!(m.pattern.regex.get().is_some_and(Option::is_some));
    }
    let many = shared(&["(?i)many-a", "(?i)many-b", "(?i)many-a", "many-c"], 3);
    let ids: Vec<usize> = many
        .iter()
        .map(|c| matches_of(c)[0].shared.get().unwrap().1.as_usize())
        .collect();
    assert_eq!(ids, [0, 1, 0, 2]);
    assert!(many[0].eval(&json!({ "s": "MANY-A" })));
    assert!(!many[1].eval(&json!({ "s": "MANY-A" })));
    assert!(many[3].eval(&json!({ "s": "a many-c" })));
}

/// The catalog's smallest group is what the figures were measured with;
/// at it a group is shared, one below it is not.
#[test]
fn shared_regexes_from_the_documented_size() {
    let sources: Vec<String> = (0..SHARED_REGEX_MIN)
        .map(|i| format!("(?i)(setup|confirm|size-test-{i:05})"))
        .collect();
    let conds: Vec<Condition> = sources
        .iter()
        .map(|p| Condition::compile(&json!({ "$.s": { "matches": p } })).unwrap())
        .collect();
    share_regexes(&conds[1..]);
    assert!(matches_of(&conds[1])[0].shared.get().is_none());
    share_regexes(&conds);
    assert!(matches_of(&conds[0])[0].shared.get().is_some());
    let hit = json!({ "s": "about SIZE-TEST-00042" });
    let hits = conds.iter().filter(|c| c.eval(&hit)).count();
    assert_eq!(hits, 1);
}

/// The list is the compiler's: every operator in it compiles (with some
/// operand), and a name not in it is refused naming the list.
#[test]
fn every_listed_operator_is_implemented() {
    let operands = [json!("x"), json!(1), json!([1]), json!(true)];
    for op in OPERATORS {
        assert!(
            operands.iter().any(|v| compile_op(op.name, v, "").is_ok()),
            "`{}` is listed but does not compile",
            op.name
        );
    }
    let e = compile_op("equal", &json!(1), "").unwrap_err();
    assert!(
        e.message.starts_with(&format!(
            "unknown operator `equal`, expected one of {}",
            operator_names().join(", ")
        )),
        "{}",
        e.message
    );
}

/// A condition's JSONPath is parsed once however many conditions use it
/// (pest parsed `$.event.ticket.subject` for each of 10,000 recipes), and
/// freed with the last of them.
#[test]
fn conditions_with_the_same_path_share_one_query() {
    fn query_of(c: &Condition) -> Arc<jsonpath_rust::parser::model::JpQuery> {
        match &c.root {
            Node::All(items) => match &items[0] {
                Node::Path(p) => p.query.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    let cond = json!([{ "$.event.shared_path_test": { "equals": 1 } }]);
    let a = Condition::compile(&cond).unwrap();
    let b = Condition::compile(&cond).unwrap();
    assert!(Arc::ptr_eq(&query_of(&a), &query_of(&b)));
    let other =
        Condition::compile(&json!([{ "$.event.other_path_test": { "equals": 1 } }])).unwrap();
    assert!(!Arc::ptr_eq(&query_of(&a), &query_of(&other)));
    let ctx = json!({"event": {"shared_path_test": 1, "other_path_test": 2}});
    assert!(a.eval(&ctx) && b.eval(&ctx) && !other.eval(&ctx));
    let weak = Arc::downgrade(&query_of(&a));
    drop((a, b));
    assert!(
        weak.upgrade().is_none(),
        "the query outlived its conditions"
    );
}

/// `matches` builds a lean regex without capture groups ([`build_regex`]):
/// it must answer as the `regex` crate does for the same pattern, groups,
/// anchors, word boundaries, repetitions and case folding included.
#[test]
fn lean_regexes_match_as_the_regex_crate_does() {
    for p in SHARED_PATTERNS {
        let lean = build_regex(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let full = regex::Regex::new(p).unwrap();
        for s in SUBJECTS {
            assert_eq!(lean.is_match(s), full.is_match(s), "pattern {p:?} on {s:?}");
        }
    }
}

proptest! {
    /// Any pattern the `regex` crate accepts from a small alphabet of
    /// pieces, on any subject from a small alphabet: the same answer.
    #[test]
    fn lean_regexes_agree_on_generated_patterns(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just("a"), Just("b"), Just("("), Just(")"), Just("|"), Just("*"),
                Just("+"), Just("?"), Just("^"), Just("$"), Just("\\b"), Just("(?i)"),
                Just("[ab]"), Just("."), Just("(?:"), Just("{2}"), Just("A"),
            ],
            0..12,
        ),
        subject in "[abAB \n]{0,10}",
    ) {
        let pattern: String = pieces.concat();
        let Ok(full) = regex::Regex::new(&pattern) else {
            prop_assert!(build_regex(&pattern).is_err(), "{pattern:?} accepted");
            return Ok(());
        };
        let lean = build_regex(&pattern).unwrap();
        prop_assert_eq!(lean.is_match(&subject), full.is_match(&subject), "{:?} on {:?}", pattern, subject);
    }

    /// Generated patterns compiled into one shared regex, on any subject:
    /// each condition answers as its own pattern does in the `regex` crate
    /// (a pattern the crate refuses is refused by `matches` too, and left
    /// out of the group).
    #[test]
    fn shared_regexes_agree_on_generated_patterns(
        patterns in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    Just("a"), Just("b"), Just("("), Just(")"), Just("|"), Just("*"),
                    Just("+"), Just("?"), Just("^"), Just("$"), Just("\\b"), Just("(?i)"),
                    Just("[ab]"), Just("."), Just("(?:"), Just("{2}"), Just("A"), Just("(?m)"),
                ],
                0..10,
            ).prop_map(|p| p.concat()),
            1..8,
        ),
        subjects in proptest::collection::vec("[abAB \n]{0,10}", 1..4),
    ) {
        let valid: Vec<&str> = patterns
            .iter()
            .map(String::as_str)
            .filter(|p| {
                let ok = regex::Regex::new(p).is_ok();
                assert_eq!(pattern(p).is_ok(), ok, "{p:?}");
                ok
            })
            .collect();
        let conds = shared(&valid, 1);
        for (p, c) in valid.iter().zip(&conds) {
            let full = regex::Regex::new(p).unwrap();
            for s in &subjects {
                prop_assert_eq!(c.eval(&json!({ "s": s })), full.is_match(s), "{:?} on {:?}", p, s);
            }
        }
    }
}
