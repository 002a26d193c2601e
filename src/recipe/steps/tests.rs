//! Compile errors of step kinds, each with its `line:column`.

use crate::connector::SecretSource;
use crate::engine::{Catalog, LoadOptions};
use std::path::PathBuf;

#[test]
fn step_ids() {
    use super::valid_id;
    assert!(valid_id("contact_1"));
    assert!(!valid_id("1x"));
    assert!(!valid_id("a-b"));
    assert!(!valid_id(""));
}

/// Load one recipe against the shipped connectors; its errors as `line:column: message`.
pub(crate) fn errors(recipe: &str) -> Vec<String> {
    errors_with_shared(recipe, None)
}

/// As [`errors`], with a `_shared.yaml` (errors there are prefixed `_shared:`).
pub(crate) fn errors_with_shared(recipe: &str, shared: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), recipe).unwrap();
    if let Some(shared) = shared {
        std::fs::write(dir.path().join("_shared.yaml"), shared).unwrap();
    }
    let opts = LoadOptions {
        connectors_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("connectors"),
        recipes_dir: dir.path().to_path_buf(),
        secrets: SecretSource::default().with_placeholders(),
        allow_internal: Vec::new(),
    };
    match Catalog::load(&opts) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| {
                let shared = if e.file.ends_with("_shared.yaml") {
                    "_shared:"
                } else {
                    ""
                };
                format!("{shared}{}:{}: {}", e.pos.line, e.pos.column, e.message)
            })
            .collect(),
    }
}

const HEAD: &str = "name: r\non: { connector: zendesk, event: ticket.created }\nvars: { agents: [a, b], team: eu }\nsteps:\n";

fn check(steps: &str) -> Vec<String> {
    errors(&format!("{HEAD}{steps}"))
}

const KINDS: &str =
    "expected exactly one of call, scenario, wait, wait_until, wait_for, set, stop, for_each, switch, state, assign";

#[test]
fn a_step_without_a_kind_is_an_error_at_the_step() {
    assert_eq!(
        check("  - id: x\n    if: [ { \"$.event.a\": { exists: true } } ]\n"),
        [format!("5:5: a step needs a kind: {KINDS}")]
    );
}

#[test]
fn a_step_with_two_kinds_is_an_error_at_the_second() {
    assert_eq!(
        check("  - id: x\n    set: { a: 1 }\n    stop: { reason: done }\n"),
        [format!(
            "7:5: a step has exactly one kind, this one gives `set` and `stop`: {KINDS}"
        )]
    );
}

#[test]
fn keys_of_another_kind_are_errors() {
    assert_eq!(
        check("  - id: x\n    set: { a: 1 }\n    with: { b: 2 }\n"),
        ["7:11: `with:` belongs to a `call` step, not to a `set` step"]
    );
}

#[test]
fn a_bad_stop_status_names_the_statuses() {
    assert_eq!(
        check("  - stop: { reason: done, status: aborted }\n"),
        ["5:35: unknown stop status `aborted`, expected `succeeded`, `skipped` or `failed`"]
    );
}

#[test]
fn for_each_over_a_known_non_list_or_too_many_items_fails_check() {
    assert_eq!(
        check("  - for_each: \"{{ vars.team }}\"\n    steps: [ { set: { a: 1 } } ]\n"),
        ["5:15: `for_each` needs a list, this is a string"]
    );
    assert_eq!(
        check("  - for_each: 3\n    steps: [ { set: { a: 1 } } ]\n"),
        ["5:15: `for_each` needs a list, this is a number"]
    );
    let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    assert_eq!(
        check(&format!(
            "  - for_each: [{}]\n    steps: [ {{ set: {{ a: 1 }} }} ]\n",
            many.join(", ")
        )),
        ["5:15: `for_each` over 101 items, more than the maximum of 100"]
    );
    // A list, or a template known only at run time, is fine.
    assert_eq!(
        check("  - for_each: \"{{ vars.agents }}\"\n    steps: [ { set: { a: \"{{ item }}-{{ item_index }}\" } } ]\n"),
        Vec::<String>::new()
    );
    assert_eq!(
        check("  - for_each: \"{{ event.ticket.tags }}\"\n    as: tag\n    steps: [ { set: { a: \"{{ tag }}\" } } ]\n"),
        Vec::<String>::new()
    );
}

#[test]
fn loop_variables_exist_only_inside_their_loop() {
    assert_eq!(
        check("  - id: each\n    for_each: [1, 2]\n    steps: [ { set: { a: \"{{ item }}\" } } ]\n  - set: { b: \"{{ item }}\" }\n"),
        ["8:15: unknown template variable `item`, expected `event`, `steps`, `vars` or `run`"]
    );
    assert_eq!(
        check("  - for_each: [1]\n    as: steps\n    steps: [ { set: { a: 1 } } ]\n"),
        ["6:9: invalid loop name `steps`, expected letters, digits and `_`, and not one of event, steps, vars, run, shared"]
    );
}

#[test]
fn nested_step_ids_are_unique_in_the_recipe_and_visible_after() {
    assert_eq!(
        check(concat!(
            "  - id: route\n    switch:\n      - when: [ { \"$.event.x\": { exists: true } } ]\n",
            "        steps: [ { id: a, set: { v: 1 } } ]\n",
            "      - else: [ { id: a, set: { v: 2 } } ]\n",
            "  - set: { w: \"{{ steps.a.v }} {{ steps.route.branch }}\" }\n",
        )),
        ["9:23: duplicate step id `a`"]
    );
}

#[test]
fn switch_cases_are_checked() {
    assert_eq!(
        check(concat!(
            "  - switch:\n      - else: [ { set: { v: 1 } } ]\n",
            "      - when: [ { \"$.steps.nope.x\": { exists: true } } ]\n",
            "        steps: [ { set: { v: 2 } } ]\n",
        )),
        [
            "6:15: `else:` must be the last case of a `switch`",
            "7:19: unknown step id `nope`, expected an earlier step: `step1_else_step1`",
        ]
    );
    assert_eq!(
        check("  - switch:\n      - when: [ { \"$.event.x\": { exists: true } } ]\n"),
        ["6:9: a case is `when:` (conditions) with `steps:`, or `else:` (steps) alone as the last case"]
    );
}

#[test]
fn templated_condition_operands_are_checked_at_load() {
    assert_eq!(
        check("  - if: [ { \"$.event.n\": { gte: \"{{ vars.nope }}\" } } ]\n    set: { a: 1 }\n"),
        ["5:33: unknown variable `vars.nope`, expected one of the recipe's `vars:` (`agents`, `team`)"]
    );
    assert_eq!(
        check(
            "  - if: [ { \"$.event.n\": { matches: \"{{ vars.team }}\" } } ]\n    set: { a: 1 }\n"
        ),
        ["5:37: `matches` takes a fixed operand, not a template"]
    );
    assert_eq!(
        check("  - if: [ { \"$.event.n\": { gte: \"{{ vars.team\" } } ]\n    set: { a: 1 }\n"),
        ["5:42: template error: syntax error: unexpected end of input, expected end of variable block"]
    );
}

const SHARED: &str = r#"
vars: { team: shared-team, support: help@example.com }
scenarios:
  escalate:
    call: zendesk.update_ticket
    with:
      ticket_id: "{{ event.ticket.id }}"
      fields: { priority: urgent, tags: [escalated] }
"#;

#[test]
fn shared_definitions_are_checked_where_they_are_written_and_used() {
    // Shared vars are known to every recipe; a scenario is a step kind.
    assert_eq!(
        errors_with_shared(
            &format!("{HEAD}  - scenario: escalate\n    with: {{ fields: {{ group: \"{{{{ vars.support }}}}\" }} }}\n"),
            Some(SHARED)
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        errors_with_shared(&format!("{HEAD}  - scenario: nope\n"), Some(SHARED)),
        ["5:15: unknown scenario `nope`, expected one of the `scenarios:` of recipes/_shared.yaml: `escalate`"]
    );
    assert_eq!(
        errors_with_shared(
            &format!("{HEAD}  - set: {{ a: 1 }}\n"),
            Some("scenarios:\n  x: { call: zendesk.nope }\nlimits: 1\n")
        ),
        ["_shared:3:1: unknown field `limits`, expected one of `vars`, `scenarios`, `calendars`",]
    );
    assert_eq!(
        errors_with_shared(
            &format!("{HEAD}  - set: {{ a: 1 }}\n"),
            Some("scenarios:\n  x: { call: zendesk.nope }\n")
        ),
        ["_shared:2:14: unknown action `nope` of connector `zendesk`, expected one of `add_internal_note`, `add_tags`, `assign_ticket`, `count_tickets`, `create_ticket`, `incremental_tickets`, `public_reply`, `search_tickets`, `search_users`, `show_ticket`, `update_ticket`"]
    );
}

#[test]
fn a_wait_duration_may_be_a_var_fixed_at_load() {
    let head = "name: r\non: { connector: zendesk, event: ticket.created }\nvars: { sla: 12h, n: 3, bad: soon }\nsteps:\n";
    let wait_for = |timeout: &str| {
        errors(&format!(
            "{head}  - id: reply\n    wait_for: {{ event: ticket.updated, key: \"{{{{ event.ticket.id }}}}\", timeout: \"{timeout}\" }}\n"
        ))
    };
    assert_eq!(wait_for("{{ vars.sla }}"), Vec::<String>::new());
    assert_eq!(
        errors(&format!("{head}  - wait: \"{{{{ vars.sla }}}}\"\n")),
        Vec::<String>::new()
    );
    let e = wait_for("{{ vars.n }}");
    assert!(
        e.len() == 1 && e[0].ends_with("vars.n must be a duration such as `12h`"),
        "{e:?}"
    );
    let e = wait_for("{{ vars.bad }}");
    assert!(
        e.len() == 1 && e[0].contains("vars.bad: invalid duration `soon`"),
        "{e:?}"
    );
    let e = wait_for("{{ vars.nope }}");
    assert!(e.len() == 1 && e[0].contains("unknown var `nope`"), "{e:?}");
}

#[test]
fn recipe_tests_see_the_call_and_inputs_of_a_scenario_step() {
    let recipe = format!(
        "{HEAD}  - id: esc\n    scenario: escalate\n    with: {{ fields: {{ group_id: 5 }} }}\ntests:\n  - name: t\n    event: {{ type: ticket.created, ticket: {{ id: 1 }} }}\n    mock: {{ zendesk.update_ticket: {{ id: 1 }} }}\n    expect_calls: [zendesk.update_ticket]\n    expect_inputs:\n      esc: {{ ticket_id: 1, fields: {{ priority: urgent, tags: [escalated], group_id: 5 }} }}\n"
    );
    assert_eq!(
        errors_with_shared(&recipe, Some(SHARED)),
        Vec::<String>::new()
    );
    // An input neither the step nor the scenario has is still an error.
    let bad = recipe.replace("esc: { ticket_id: 1,", "esc: { nope: 1,");
    assert_eq!(
        errors_with_shared(&bad, Some(SHARED)),
        ["14:14: step `esc` has no input `nope` in its `with:`, expected one of `fields`, `ticket_id`"]
    );
}
