//! The `switchboard` command line: `check` reporting broken files as
//! `file:line:column: message`, `serve` refusing them, and the `runs`/`events`
//! commands against a running hub and against a stopped hub's store.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn yaml_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .count()
}

#[test]
fn check_passes_on_the_shipped_files() {
    let data = tempfile::tempdir().unwrap();
    let connectors = repo().join("connectors");
    let recipes = repo().join("recipes");
    let out = command(&["check"])
        .arg("--data")
        .arg(data.path())
        .arg("--connectors")
        .arg(&connectors)
        .arg("--recipes")
        .arg(&recipes)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: {} connector(s), {} recipe(s)\n",
            yaml_files(&connectors),
            yaml_files(&recipes)
        )
    );
    assert_eq!(stderr(&out), "");
}

/// `check` on the shipped files plus `recipes/bad.yaml` holding `yaml` fails
/// with exactly these messages, each prefixed with `bad.yaml:line:column: `.
#[track_caller]
fn check_fails(yaml: &str, expected: &[(usize, usize, &str)]) -> Config {
    let cfg = Config::shipped();
    let file = cfg.recipe("bad", yaml);
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let mut want: String = expected
        .iter()
        .map(|(line, col, msg)| format!("{}:{line}:{col}: {msg}\n", file.display()))
        .collect();
    want.push_str(&format!("error: {} problem(s) found\n", expected.len()));
    assert_eq!(stderr(&out), want);
    cfg
}

const HEAD: &str = "name: bad\non:\n  connector: zendesk\n  event: ticket.created\n";

/// A recipe of `HEAD` and `steps` (its `steps:` list starts on line 6).
fn recipe(steps: &str) -> String {
    format!("{HEAD}steps:\n{steps}")
}

#[test]
fn check_reports_yaml_syntax_errors() {
    check_fails(
        &recipe(
            "  - id: first\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"{{ event.ticket.id }}\"\n     note: x\n",
        ),
        &[(
            10,
            10,
            "invalid YAML: while parsing a block mapping, did not find expected key \
             (check the indentation of this line against the lines above)",
        )],
    );
}

#[test]
fn check_suggests_the_field_meant() {
    check_fails(
        &recipe("  - id: first\n    cal: zendesk.show_ticket\n"),
        &[(
            7,
            5,
            "unknown field `cal`, expected one of `id`, `if`, `call`, `with`, `scenario`, `set`, `stop`, `switch`, `for_each`, `steps`, `as`, `state`, `assign`, `wait`, `wait_until`, `wait_for`; did you mean `call`?",
        )],
    );
}

#[test]
fn check_reports_unknown_connectors_and_actions() {
    check_fails(
        &recipe("  - id: first\n    call: jira.create_issue\n  - id: second\n    call: zendesk.close_ticket\n"),
        &[
            (
                7,
                11,
                "unknown connector `jira`, expected one of `app`, `deepl`, `freshdesk`, `google_translate`, `hubspot`, `sendgrid`, `slack`, `slack_commands`, `stripe`, `typeform`, `typeform_responses`, `wufoo`, `zendesk`",
            ),
            (
                9,
                11,
                "unknown action `close_ticket` of connector `zendesk`, expected one of \
                 `add_internal_note`, `add_tags`, `assign_ticket`, `count_tickets`, `create_ticket`, `incremental_tickets`, `public_reply`, `search_tickets`, `search_users`, `show_ticket`, `update_ticket`",
            ),
        ],
    );
}

#[test]
fn check_reports_unknown_step_ids_in_templates() {
    check_fails(
        &recipe(
            "  - id: first\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"{{ event.ticket.id }}\"\n  - id: second\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"{{ steps.nope.id }}\"\n",
        ),
        &[(
            13,
            18,
            "unknown step id `nope`, expected an earlier step: `first`",
        )],
    );
}

#[test]
fn check_reports_a_step_used_in_a_condition_before_it_is_defined() {
    check_fails(
        &recipe(
            "  - id: first\n    if:\n      - \"$.steps.second.id\": { exists: true }\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"1\"\n  - id: second\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"2\"\n",
        ),
        &[(
            8,
            9,
            "unknown step id `second`, expected an earlier step: (none are defined)",
        )],
    );
}

#[test]
fn check_reports_unknown_template_roots() {
    check_fails(
        &recipe(
            "  - id: first\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"{{ evnt.x }}\"\n",
        ),
        &[(
            9,
            18,
            "unknown template variable `evnt`, expected `event`, `steps`, `vars` or `run`",
        )],
    );
}

#[test]
fn check_reports_unknown_and_missing_inputs() {
    check_fails(
        &recipe(
            "  - id: first\n    call: zendesk.add_tags\n    with:\n      ticket_id: \"{{ event.ticket.id }}\"\n      tag: vip\n",
        ),
        &[
            (9, 7, "missing input `tags` required by `zendesk.add_tags`"),
            (
                10,
                12,
                "action `zendesk.add_tags` has no input `tag`, expected one of `tags`, `ticket_id`",
            ),
        ],
    );
}

const ONE_STEP: &str =
    "steps:\n  - id: first\n    call: zendesk.show_ticket\n    with:\n      ticket_id: \"1\"\n";

#[test]
fn check_reports_invalid_regexes_on_one_line() {
    check_fails(
        &format!("{HEAD}if:\n  - \"$.event.ticket.subject\": {{ matches: \"(?i)confirm(\" }}\n{ONE_STEP}"),
        &[(
            6,
            42,
            "invalid regex `(?i)confirm(`: unclosed group at column 12",
        )],
    );
}

#[test]
fn check_reports_invalid_jsonpaths() {
    check_fails(
        &format!("{HEAD}if:\n  - \"$.event.ticket[?(\": {{ exists: true }}\n{ONE_STEP}"),
        &[(
            6,
            5,
            "invalid JSONPath `$.event.ticket[?(`: expected atom_expr at column 18",
        )],
    );
}

/// A contact search whose output a later step reads (`steps.contact.…`).
const CONTACT: &str = "  - id: contact\n    call: hubspot.search_contact_by_email\n    with:\n      email: \"{{ event.ticket.requester.email }}\"\n";

#[test]
fn check_reports_a_step_output_the_action_does_not_produce() {
    let fields = "`email`, `firstname`, `found`, `id`, `lastname`, `lead_status`, `lifecycle`, `owner_id`, `plan`, `revenue`";
    check_fails(
        &recipe(&format!(
            "{CONTACT}  - id: tag\n    if:\n      - \"$.steps.contact.plann\": {{ equals: pro }}\n    call: zendesk.add_tags\n    with:\n      ticket_id: \"{{{{ steps.contact.lifecycl }}}}\"\n      tags: [\"{{{{ steps.contact.plan }}}}\"]\n"
        )),
        &[
            (
                12,
                9,
                &format!("step `contact` has no output `plann`, expected one of its action's `output:` fields: {fields}; did you mean `plan`?"),
            ),
            (
                15,
                18,
                &format!("step `contact` has no output `lifecycl`, expected one of its action's `output:` fields: {fields}; did you mean `lifecycle`?"),
            ),
        ],
    );
}

/// An action without `output:` answers its whole response: a field read of
/// its step cannot be checked, and `check` says so once per step (at the
/// first read), as a note — the recipe still passes.
#[test]
fn check_notes_once_that_a_step_without_output_fields_is_not_checked() {
    let cfg = Config::shipped();
    let file = cfg.recipe(
        "enroll",
        &recipe(
            "  - id: enroll\n    call: hubspot.enroll_in_workflow\n    with: { workflow_id: 7, email: a@b.c }\n  - id: tag\n    if:\n      - \"$.steps.enroll.statuss\": { equals: ok }\n    call: zendesk.add_tags\n    with:\n      ticket_id: \"{{ steps.enroll.id }}\"\n      tags: [\"{{ steps.enroll.id }}\"]\n",
        ),
    );
    let out = cfg.check();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let notes: Vec<&str> = err.lines().filter(|l| l.contains(": note: ")).collect();
    assert_eq!(
        notes,
        [format!(
            "{}:11:9: note: `steps.enroll.statuss` is not checked: step `enroll` calls `hubspot.enroll_in_workflow`, whose action declares no `output:`, so the step's output is the whole response (declare `output:` fields on the action to have every field a recipe reads checked)",
            file.display()
        )],
        "{err}"
    );
}

#[test]
fn check_reports_mocks_that_do_not_fit_the_recipe() {
    let fields = "`email`, `firstname`, `found`, `id`, `lastname`, `lead_status`, `lifecycle`, `owner_id`, `plan`, `revenue`";
    check_fails(
        &recipe(&format!(
            "{CONTACT}  - id: totals\n    set: {{ n: 1 }}\ntests:\n  - name: t\n    event: {{ type: ticket.created, ticket: {{ id: 1, requester: {{ email: a@b.c }} }} }}\n    mock:\n      contct: {{ id: \"1\" }}\n      totals: {{ n: 1 }}\n      contact: {{ sequence: [ {{ plann: pro }}, 7 ] }}\n    expect_calls: [hubspot.search_contact_by_email]\n"
        )),
        &[
            (16, 7, "unknown mock `contct`: expected a `connector.action` or the id of a step that calls one: `contact`; did you mean `contact`?"),
            (17, 7, "step `totals` calls nothing, so it has nothing to mock: a mock is for a `connector.action` or the id of a step that calls one"),
            (
                18,
                32,
                &format!("`hubspot.search_contact_by_email` has no output `plann`, expected one of its action's `output:` fields: {fields}; did you mean `plan`?"),
            ),
            (
                18,
                46,
                &format!("the output of `hubspot.search_contact_by_email` is a mapping of its action's `output:` fields ({fields}), not a single value"),
            ),
        ],
    );
}

#[test]
fn check_says_jsonpath_root_for_a_wrong_root() {
    check_fails(
        &format!("{HEAD}if:\n  - \"$.evnt.ticket.id\": {{ exists: true }}\n{ONE_STEP}"),
        &[(
            6,
            5,
            "unknown JSONPath root `$.evnt`, expected `$.event`, `$.steps`, `$.vars` or `$.run`; did you mean `$.event`?",
        )],
    );
}

/// `check --no-secrets` (a recipes repository's CI) loads connectors whose
/// secrets are not set, and still reports the recipes' mistakes.
#[test]
fn check_without_secrets() {
    let cfg = Config::shipped();
    let without_secrets = |args: &[&str]| {
        let mut cmd = cfg.command("check");
        cmd.args(args);
        for (k, _) in test_secrets() {
            cmd.env_remove(k);
        }
        cmd.output().unwrap()
    };
    let out = without_secrets(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secret `token` is not set"),
        "{}",
        stderr(&out)
    );
    let out = without_secrets(&["--no-secrets"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: {} connector(s), {} recipe(s)\n",
            yaml_files(&cfg.connectors),
            yaml_files(&cfg.recipes)
        )
    );
    let bad = cfg.recipe(
        "bad",
        &recipe("  - id: first\n    call: jira.create_issue\n"),
    );
    let out = without_secrets(&["--no-secrets"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!("{}:7:11: unknown connector `jira`", bad.display())),
        "{}",
        stderr(&out)
    );
}

/// A note whose body is a literal block scalar starting on line 10.
fn note(body: &str) -> String {
    recipe(&format!(
        "  - id: note\n    call: zendesk.add_internal_note\n    with:\n      ticket_id: \"1\"\n      body: |\n{body}"
    ))
}

#[test]
fn check_points_inside_a_block_scalar_at_a_template_syntax_error() {
    check_fails(
        &note("        Hello,\n        {{ event.ticket.id }}\n        {{ foo( }}\n"),
        &[(13, 17, "template error: syntax error: unexpected `}`")],
    );
}

#[test]
fn check_reports_unknown_template_filters_tests_and_methods() {
    check_fails(
        &note(
            "        Hello {{ event.ticket.requester.name | defualt('there') }},\n        {% if event.ticket.tags is defnied %}tagged{% endif %}\n        {{ event.ticket.subject.split() }} {{ \"a | b\" | upper }}\n",
        ),
        &[
            (11, 48, "unknown template filter `defualt`; did you mean `default`?"),
            (12, 36, "unknown template test `defnied`; did you mean `defined`?"),
            (
                13,
                32,
                "unknown template function `.split()`: values have no methods here, expected a filter: `| split`",
            ),
        ],
    );
}

/// Templates outside steps — a condition's templated operand, the
/// concurrency key, the reply — are checked as step inputs are: each
/// mistake at its own line and column, inside a block scalar too.
#[test]
fn check_points_inside_templates_outside_steps() {
    check_fails(
        &format!(
            "{HEAD}vars: {{ min: 3 }}\nif:\n  - \"$.event.ticket.id\": {{ gte: \"{{{{ vars.min | defualt(1) }}}}\" }}\nconcurrency: {{ key: \"{{{{ event.ticket.id | lowr }}}}\" }}\nreply:\n  body: |\n    ok\n    {{{{ event.ticket.id | tojsn }}}}\n{ONE_STEP}"
        ),
        &[
            (7, 48, "unknown template filter `defualt`; did you mean `default`?"),
            (8, 43, "unknown template filter `lowr`; did you mean `lower`?"),
            (12, 26, "unknown template filter `tojsn`; did you mean `tojson`?"),
        ],
    );
}

/// Every mistake of a file is reported, not only the first of a block: a
/// bad schedule does not hide a bad wait, a bad variable or a bad filter
/// after it.
#[test]
fn check_reports_every_mistake_of_a_file() {
    check_fails(
        "name: bad\non: { schedule: \"0 25 * * MON-FRI\" }\nsteps:\n  - id: later\n    wait: 10x\n  - id: done\n    stop: { reason: \"{{ vars.nope | uper }}\" }\n",
        &[
            (2, 17, "invalid cron expression `0 25 * * MON-FRI`: hour 25 is out of range 0-23 (expected five fields `minute hour day-of-month month day-of-week`, e.g. `0 9 * * MON-FRI`, or six with leading seconds)"),
            (5, 11, "invalid duration `10x`, expected a duration such as `30s`, `15m`, `12h`, `3d` or `1h 30m`"),
            (7, 21, "unknown variable `vars.nope`: the recipe declares no `vars:` (nor does `_shared.yaml`)"),
            (7, 37, "unknown template filter `uper`; did you mean `upper`?"),
        ],
    );
}

#[test]
fn check_suggests_the_action_and_connector_meant() {
    let cfg = check_fails(
        &recipe("  - call: zendesk.show_tickt\n    with: { ticket_id: \"1\" }\n"),
        &[(
            6,
            11,
            "unknown action `show_tickt` of connector `zendesk`, expected one of `add_internal_note`, `add_tags`, `assign_ticket`, `count_tickets`, `create_ticket`, `incremental_tickets`, `public_reply`, `search_tickets`, `search_users`, `show_ticket`, `update_ticket`; did you mean `show_ticket`?",
        )],
    );
    drop(cfg);
    let cfg = Config::shipped();
    let file = cfg.recipe(
        "bad",
        &recipe("  - call: zendesks.show_ticket\n    with: { ticket_id: \"1\" }\n"),
    );
    let err = stderr(&cfg.check());
    assert!(
        err.starts_with(&format!(
            "{}:6:11: unknown connector `zendesks`, expected one of `app`",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("`zendesk`; did you mean `zendesk`?\n"),
        "{err}"
    );
}

/// A method that is a well-formed token but no HTTP method, and a bad
/// JSONPath in a connector's `output:`, get the recipe's tidy messages.
#[test]
fn check_reports_connector_methods_and_jsonpaths_tidily() {
    let cfg = Config::shipped();
    let meth = cfg.connector(
        "meth",
        "name: meth\nbase_url: https://meth.example.com\nactions:\n  send:\n    method: GETT\n    path: /x\n",
    );
    let path = cfg.connector(
        "path",
        "name: path\nbase_url: https://path.example.com\nactions:\n  get:\n    method: get\n    path: /y\n    output:\n      id: \"$.items[?(\"\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:5:13: unknown HTTP method `GETT`, expected one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS; did you mean `GET`?\n\
             {}:8:11: invalid JSONPath `$.items[?(`: expected atom_expr at column 11\n\
             error: 2 problem(s) found\n",
            meth.display(),
            path.display()
        )
    );
}

/// A connector's templates are checked as a recipe's: an unknown filter and
/// a syntax error at their place, inside a block scalar too.
#[test]
fn check_points_inside_connector_templates() {
    let cfg = Config::shipped();
    let file = cfg.connector(
        "tpl",
        "name: tpl\nbase_url: https://tpl.example.com\nactions:\n  send:\n    inputs: { text: {} }\n    method: POST\n    path: /x\n    headers: { X-Text: \"{{ input.text | lowr }}\" }\n    body:\n      text: |\n        Hello\n        {{ input.text( }}\n",
    );
    let out = cfg.check();
    let f = file.display();
    assert_eq!(
        stderr(&out),
        format!(
            "{f}:8:41: unknown template filter `lowr`; did you mean `lower`?\n\
             {f}:12:24: template error: syntax error: unexpected `}}`\n\
             error: 2 problem(s) found\n"
        )
    );
}

/// Every item of a condition list is checked, not only up to the first bad
/// one; silent mismatches (`in:` a scalar, a number against a list) and a
/// templated operand's variables are errors.
#[test]
fn check_reports_every_bad_condition_of_a_list() {
    check_fails(
        &format!(
            "{HEAD}vars: {{ min: 3 }}\nif:\n  - \"$.event.ticket.tags\": {{ in: vip }}\n  - \"$.event.ticket.id\": {{ gt: [1, 2] }}\n  - \"$.event.ticket.id\": {{ gte: \"{{{{ vars.mni }}}}\" }}\n  - \"$.evnt.id\": {{ exists: true }}\n{ONE_STEP}"
        ),
        &[
            (7, 34, "`in` expects a list, found a string"),
            (8, 32, "`gt` expects a number or a string, found a list"),
            (9, 33, "unknown variable `vars.mni`, expected one of the recipe's `vars:` (`min`); did you mean `min`?"),
            (
                10,
                5,
                "unknown JSONPath root `$.evnt`, expected `$.event`, `$.steps`, `$.vars` or `$.run`; did you mean `$.event`?",
            ),
        ],
    );
}

#[test]
fn check_names_a_missing_secret_and_its_variable() {
    let cfg = Config::shipped();
    // A recipe uses slack, so its missing token is an error (unused, it
    // would be a warning: `a_missing_secret_of_an_unused_connector_is_a_warning`).
    cfg.recipe(
        "notify",
        "name: notify\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - call: slack.post_message\n    with: { channel: C1, text: hi }\n",
    );
    let out = cfg
        .command("check")
        .env_remove("SWITCHBOARD_SECRET_SLACK_BOT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:7:11: connector `slack`: secret `bot_token` is not set (set \
             SWITCHBOARD_SECRET_SLACK_BOT_TOKEN or add `slack: {{ bot_token: ... }}` to the \
             secrets file)\nerror: 1 problem(s) found\n",
            cfg.connectors.join("slack.yaml").display()
        )
    );
}

/// A connector that no loaded recipe uses may lack its secrets: a warning,
/// and the connector is not loaded (its webhook answers 404), so nothing
/// ever runs on stand-in credentials.
#[tokio::test]
async fn a_missing_secret_of_an_unused_connector_is_a_warning() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "billing",
        "name: billing\nbase_url: https://billing.example.com\nsecrets: [api_key, webhook_secret]\n\
         auth: { type: bearer, token: \"{{ secrets.api_key }}\" }\n\
         webhook:\n  signature: { scheme: stripe, secret: webhook_secret }\n  event_type: { path: \"$.type\" }\n\
         actions:\n  ping: { method: GET, path: /ping }\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let file = cfg.connectors.join("billing.yaml");
    for (col, secret) in [(11, "api_key"), (20, "webhook_secret")] {
        let line = format!(
            "{}:3:{col}: warning: connector `billing`: secret `{secret}` is not set (set \
             SWITCHBOARD_SECRET_BILLING_{} or add `billing: {{ {secret}: ... }}` to the secrets \
             file); no loaded recipe uses connector `billing`, so it is not loaded (its webhook \
             answers 404)",
            file.display(),
            secret.to_uppercase()
        );
        assert!(err.contains(&line), "{err}\nwanted: {line}");
    }
    // Every shipped connector, not `billing`.
    let shipped = std::fs::read_dir(repo().join("connectors"))
        .unwrap()
        .count();
    assert!(
        stdout(&out).contains(&format!("ok: {shipped} connector(s)")),
        "{}",
        stdout(&out)
    );

    let hub = Hub::start(cfg.options()).await;
    let (status, body) = hub.post("billing", &[], b"{}").await;
    assert_eq!(status, 404, "{body}");

    // Once a recipe calls it, the same missing secrets stop `check`.
    cfg.recipe(
        "uses-billing",
        "name: uses-billing\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - call: billing.ping\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("connector `billing`: secret `api_key` is not set"),
        "{err}"
    );
    assert!(!err.contains("warning: connector `billing`"), "{err}");
    assert!(err.contains("error: 2 problem(s) found"), "{err}");

    // So does a recipe that only listens to its events: a trigger, a
    // `wait_for`, a `cancel_on`.
    for (i, uses) in [
        "on: { connector: billing, event: invoice.paid }\nsteps:\n  - stop: { reason: paid }\n",
        "on: { connector: zendesk, event: ticket.created }\nsteps:\n  - wait_for: { connector: billing, event: invoice.paid, key: \"{{ event.ticket.id }}\", timeout: 1h }\n",
        "on: { connector: zendesk, event: ticket.created }\ncancel_on:\n  - { connector: billing, event: invoice.paid, key: \"{{ event.ticket.id }}\" }\nsteps:\n  - wait: 1h\n",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::remove_file(cfg.recipes.join(if i == 0 { "uses-billing.yaml" } else { "listens.yaml" }))
            .unwrap();
        cfg.recipe("listens", &format!("name: listens\n{uses}"));
        let out = cfg.check();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{uses}\n{err}");
        assert!(err.contains("error: 2 problem(s) found"), "{uses}\n{err}");
        assert!(
            err.contains("connector `billing`: secret `webhook_secret` is not set"),
            "{uses}\n{err}"
        );
    }
}

#[test]
fn serve_refuses_broken_files_with_the_check_message() {
    let cfg = check_fails(
        &recipe("  - id: first\n    call: jira.create_issue\n"),
        &[(
            7,
            11,
            "unknown connector `jira`, expected one of `app`, `deepl`, `freshdesk`, `google_translate`, `hubspot`, `sendgrid`, `slack`, `slack_commands`, `stripe`, `typeform`, `typeform_responses`, `wufoo`, `zendesk`",
        )],
    );
    let line = format!(
        "{}:7:11: unknown connector `jira`, expected one of `app`, `deepl`, `freshdesk`, `google_translate`, `hubspot`, `sendgrid`, `slack`, `slack_commands`, `stripe`, `typeform`, `typeform_responses`, `wufoo`, `zendesk`",
        cfg.recipes.join("bad.yaml").display()
    );
    let mut serve = cfg.command("serve");
    serve.args(["--listen", "127.0.0.1:0"]);
    let out = output_within(serve, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.lines().any(|l| l == line), "{err}");
    assert!(
        err.contains("error: 1 problem(s) in connectors/recipes; not starting"),
        "{err}"
    );
}

#[test]
fn unsigned_webhooks_are_allowed_with_a_warning() {
    let cfg = Config::shipped();
    let file = cfg.connector(
        "open",
        "name: open\nbase_url: https://open.example.com\nwebhook:\n  signature: { scheme: none }\n  event_type: { path: \"$.type\" }\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "ok: {} connector(s), {} recipe(s)\n",
            yaml_files(&cfg.connectors),
            yaml_files(&cfg.recipes)
        )
    );
    assert_eq!(
        stderr(&out),
        format!(
            "{}:4:24: warning: connector `open` accepts unsigned webhooks (`scheme: none`): \
             anyone who can reach the hub can trigger its recipes\n",
            file.display()
        )
    );
}

#[test]
fn signature_options_are_reported_at_their_own_key() {
    let cfg = Config::shipped();
    let hmac = cfg.connector(
        "hmac",
        "name: hmac\nbase_url: https://hmac.example.com\nsecrets: [key]\nwebhook:\n  signature:\n    scheme: hmac\n    secret: key\n    header: X-Sig\n    tolerance: 1m\n",
    );
    let stripe = cfg.connector(
        "stripe",
        "name: stripe\nbase_url: https://stripe.example.com\nsecrets: [key]\nwebhook:\n  signature:\n    scheme: stripe\n    secret: key\n    prefix: \"v1=\"\n",
    );
    let out = cfg
        .command("check")
        .env("SWITCHBOARD_SECRET_HMAC_KEY", "k")
        .env("SWITCHBOARD_SECRET_STRIPE_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:9:16: `tolerance` has no effect: signature scheme `hmac` signs no timestamp \
             (set `timestamp_header` to sign one)\n\
             {}:8:5: unknown field `prefix`, expected `secret` or `tolerance`\n\
             error: 2 problem(s) found\n",
            hmac.display(),
            stripe.display()
        )
    );
}

#[test]
fn rates_and_methods_are_reported_at_their_own_key() {
    let cfg = Config::shipped();
    let lim = cfg.connector(
        "lim",
        "name: lim\nbase_url: https://lim.example.com\nlimits: { rate: fast }\n",
    );
    let meth = cfg.connector(
        "meth",
        "name: meth\nbase_url: https://meth.example.com\nactions:\n  send:\n    method: \"PO ST\"\n    path: /x\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:3:17: invalid rate `fast`, expected CALLS/DURATION such as `100/10s`\n\
             {}:5:13: invalid value: string \"PO ST\", expected an HTTP method\n\
             error: 2 problem(s) found\n",
            lim.display(),
            meth.display()
        )
    );
}

/// Run the CLI on a stopped hub's data dir; `--url` leads nowhere, so only
/// the store can answer.
fn offline(data: &Path, args: &[&str]) -> std::process::Output {
    command(args)
        .arg("--data")
        .arg(data)
        .arg("--url")
        .arg("http://127.0.0.1:1")
        .output()
        .unwrap()
}

#[track_caller]
fn ok(out: std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

#[track_caller]
fn json_of(out: std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

#[tokio::test]
async fn runs_and_events_commands_online_and_offline() {
    let hubspot = MockApi::start(vec![
        route(
            Method::POST,
            "/crm/v3/objects/contacts/search",
            200,
            json!({"total": 1, "results": [{"id": "42", "properties": {
                "email": "bob@example.com", "lifecyclestage": "subscriber", "plan": "starter"}}]}),
        ),
        route(Method::POST, "/automation/v2/workflows/", 204, Value::Null),
    ])
    .await;
    let zendesk = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 7}}),
    )])
    .await;
    let mut hub = Hub::start(
        HubOptions::default()
            .base_url("hubspot", &hubspot.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(7, "Setup mail never came", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = accepted["event_id"].as_str().unwrap().to_string();
    let runs = hub.finished_runs(&event_id).await;
    let run = runs
        .iter()
        .find(|r| r["recipe"] == "resend-confirmation")
        .unwrap()
        .clone();
    let run_id = run["id"].as_str().unwrap().to_string();
    let (_, api_event) = hub.api(&format!("/api/events/{event_id}")).await;

    // Through the admin API of the running hub.
    let show = ok(hub.cli(&["runs", "show", &run_id]));
    // The run names the version of its recipe it ran (the catalog's).
    let (_, catalog) = hub.api("/api/catalog").await;
    let version = catalog["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "resend-confirmation")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(version.len(), 12, "{catalog}");
    assert_eq!(run["version"], version.as_str(), "{run}");
    assert!(
        show.starts_with(&format!(
            "run     {run_id}\nrecipe  resend-confirmation (version {version})\nevent   {event_id}\nstatus  succeeded\n"
        )),
        "{show}"
    );
    for step in [
        "1. contact (hubspot.search_contact_by_email)  succeeded  HTTP 200",
        "2. resend (hubspot.enroll_in_workflow)  succeeded  HTTP 204",
        "3. note (zendesk.add_internal_note)  succeeded  HTTP 200",
    ] {
        assert!(show.contains(step), "{step} in\n{show}");
    }
    assert!(
        show.contains("   input:  {\n        \"email\": \"bob@example.com\"\n      }\n"),
        "{show}"
    );
    assert!(
        show.contains("   input:  {\n        \"email\": \"bob@example.com\",\n        \"workflow_id\": \"1234567\"\n      }\n"),
        "{show}"
    );
    assert_eq!(json_of(hub.cli(&["runs", "show", &run_id, "--json"])), run);

    let list = ok(hub.cli(&["runs", "list"]));
    assert_eq!(list.lines().count(), 2, "{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with(&run_id))
        .unwrap_or_else(|| panic!("{run_id} in\n{list}"));
    assert!(
        line.starts_with(&format!(
            "{run_id}  succeeded  resend-confirmation          "
        )),
        "{line}"
    );
    assert!(line.ends_with("  steps:3  "), "{line:?}");
    let listed = json_of(hub.cli(&["runs", "list", "--json"]));
    let mut ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    want.sort();
    assert_eq!(ids, want);

    let events = ok(hub.cli(&["events", "list"]));
    assert_eq!(events.lines().count(), 1, "{events}");
    assert!(
        events.starts_with(&format!(
            "{event_id}  zendesk    webhook  ticket.created           "
        )),
        "{events}"
    );
    assert!(events.ends_with("  runs:2\n"), "{events}");
    let shown = ok(hub.cli(&["events", "show", &event_id]));
    assert!(
        shown.starts_with(&format!(
            "event     {event_id}\nconnector zendesk\norigin    webhook\ntype      ticket.created\ndelivery  inv-"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "run       {run_id}  resend-confirmation  succeeded\n"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("\"subject\": \"Setup mail never came\""),
        "{shown}"
    );
    assert_eq!(
        json_of(hub.cli(&["events", "show", &event_id, "--json"])),
        api_event
    );

    // Filtered listings (through the index) and the store's counts.
    let filtered = json_of(hub.cli(&[
        "runs",
        "list",
        "--json",
        "--status",
        "succeeded",
        "--recipe",
        "resend-confirmation",
    ]));
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered["items"][0]["id"], run_id.as_str());
    let none = json_of(hub.cli(&["runs", "list", "--json", "--status", "dead"]));
    assert_eq!(none["items"], json!([]));
    let stats = json_of(hub.cli(&["store", "stats", "--scan", "--json"]));
    assert_eq!(stats["counts"]["events"], 1, "{stats}");
    assert_eq!(stats["counts"]["runs"]["succeeded"], runs.len(), "{stats}");
    assert_eq!(stats["counts"]["queue_depth"], 0, "{stats}");
    assert_eq!(stats["counts"], stats["scanned"], "{stats}");
    assert!(stats["bytes_on_disk"].as_u64().unwrap() > 0, "{stats}");
    let text = ok(hub.cli(&["store", "stats"]));
    assert!(
        text.starts_with("events        1\nruns          2\n"),
        "{text}"
    );
    assert!(text.contains("  succeeded   2\n"), "{text}");

    for (args, msg) in [
        (["runs", "show", "NOPE"], "error: no run NOPE\n"),
        (["events", "show", "NOPE"], "error: no event NOPE\n"),
    ] {
        let out = hub.cli(&args);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr(&out), msg);
    }

    // The hub is gone: the same answers straight from its store.
    hub.kill();
    let data = hub.data.clone();
    assert_eq!(ok(offline(&data, &["runs", "show", &run_id])), show);
    assert_eq!(
        json_of(offline(&data, &["runs", "show", &run_id, "--json"])),
        run
    );
    assert_eq!(ok(offline(&data, &["runs", "list"])), list);
    assert_eq!(
        json_of(offline(&data, &["runs", "list", "--json"]))["items"],
        listed["items"]
    );
    assert_eq!(ok(offline(&data, &["events", "list"])), events);
    let offline_stats = json_of(offline(&data, &["store", "stats", "--scan", "--json"]));
    assert_eq!(offline_stats["counts"], stats["counts"]);
    assert_eq!(ok(offline(&data, &["events", "show", &event_id])), shown);
    assert_eq!(
        json_of(offline(&data, &["events", "show", &event_id, "--json"])),
        api_event
    );
    for (args, msg) in [
        (["runs", "show", "NOPE"], "error: no run NOPE\n"),
        (["events", "show", "NOPE"], "error: no event NOPE\n"),
    ] {
        let out = offline(&data, &args);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(stderr(&out), msg);
    }
}

/// The allocator runs with the options `main.rs` gives it (a renamed
/// `malloc_conf` symbol would drop them without a sound): asked to,
/// jemalloc prints the options in effect when the process exits.
#[test]
fn jemalloc_runs_with_the_binarys_options() {
    let out = command(&["--version"])
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("opt.background_thread: true"), "{err}");
}

/// A connection timeout of 0 would close every connection before its first
/// request: `serve` refuses it before it opens anything.
#[test]
fn serve_refuses_a_zero_connection_timeout() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--header-timeout", "--idle-timeout", "--body-timeout"] {
        let out = std::process::Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args([flag, "0s"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("a timeout of 0 would close every connection at once"),
            "{flag}: {}",
            stderr(&out)
        );
        assert!(
            !dir.path().join("data").exists(),
            "{flag}: a store was opened"
        );
    }
}
