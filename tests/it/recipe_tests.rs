//! `switchboard test`: the recipes' own `tests:` run with mocked connectors.
//! The shipped recipes' tests pass without any secret and without a request
//! leaving the process; a wrong expectation or a missing mock fails with the
//! difference; a broken `tests:` entry is a `check` error with its location.

use crate::utils::*;
use std::path::Path;
use std::process::{Command, Output};

/// `switchboard test` over `connectors` and `recipes`, with no secret set.
fn test_command(connectors: &Path, recipes: &Path, data: &Path) -> Command {
    let mut cmd = command(&["test"]);
    for (k, _) in test_secrets() {
        cmd.env_remove(k);
    }
    cmd.arg("--data")
        .arg(data)
        .arg("--connectors")
        .arg(connectors)
        .arg("--recipes")
        .arg(recipes);
    cmd
}

fn run_tests(cfg: &Config, names: &[&str]) -> Output {
    test_command(&cfg.connectors, &cfg.recipes, &cfg.dir.path().join("data"))
        .args(names)
        .output()
        .unwrap()
}

/// `(recipe, [test names])` of every shipped recipe, read from the files.
fn shipped_tests() -> Vec<(String, Vec<String>)> {
    let dir = repo().join("recipes");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        // Recipes only: not `_shared.yaml`, not the support/ pack (its own test).
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !path.is_file() || name.starts_with('_') {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let (v, _) = switchboard::yaml::load_value(&path, &text).unwrap();
        let names = v["tests"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has no tests", path.display()))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        out.push((v["name"].as_str().unwrap().to_string(), names));
    }
    out.sort();
    out
}

#[tokio::test]
async fn shipped_recipe_tests_pass_offline_without_secrets() {
    // Every connector points at a fake API that internal calls may reach: a
    // dry run that sent anything would show up here.
    let api = MockApi::start(Vec::new()).await;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = test_command(
        &repo().join("connectors"),
        &repo().join("recipes"),
        data.path(),
    );
    cmd.env("SWITCHBOARD_ALLOW_INTERNAL", "*");
    for c in ["ZENDESK", "HUBSPOT", "DEEPL", "SLACK"] {
        cmd.env(format!("SWITCHBOARD_BASE_URL_{c}"), &api.url);
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stderr(&out), "");

    let shipped = shipped_tests();
    let mut want = String::new();
    let mut total = 0;
    for (recipe, tests) in &shipped {
        assert!(
            tests.len() >= 3,
            "{recipe}: main path, skip path and an edge"
        );
        for t in tests {
            want += &format!("ok   {recipe} › {t}\n");
            total += 1;
        }
    }
    want += &format!("\n{total} passed, 0 failed ({} recipe(s))\n", shipped.len());
    assert_eq!(stdout(&out), want);
    assert!(api.received().is_empty(), "{:?}", api.received());
}

#[test]
fn names_select_recipes() {
    let cfg = Config::shipped();
    let out = run_tests(&cfg, &["crm-enrichment"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .all(|l| !l.starts_with("ok") || l.starts_with("ok   crm-enrichment › ")),
        "{text}"
    );
    assert!(text.ends_with("failed (1 recipe(s))\n"), "{text}");

    let out = run_tests(&cfg, &["crm-enrichment", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: no recipe named `nope`\n");
}

/// `test NAME` runs a recipe while another file is broken: the other
/// file's error is printed, not fatal. Without names, or naming the broken
/// recipe, it is.
#[test]
fn a_named_recipe_is_tested_while_another_recipe_is_broken() {
    let cfg = Config::shipped();
    cfg.recipe(
        "broken",
        "name: broken\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - call: jira.create_issue\n",
    );
    let out = run_tests(&cfg, &["crm-enrichment"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}{}", stdout(&out));
    assert!(
        err.contains("broken.yaml:4:11: unknown connector `jira`"),
        "{err}"
    );
    assert!(
        err.contains("note: 1 problem(s) in other files; testing crm-enrichment anyway"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("ok   crm-enrichment › "),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).ends_with("0 failed (1 recipe(s))\n"),
        "{}",
        stdout(&out)
    );

    for names in [&[][..], &["broken"][..], &["crm-enrichment", "broken"][..]] {
        let out = run_tests(&cfg, names);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{names:?}: {err}");
        assert!(
            err.ends_with("error: 1 problem(s) found\n"),
            "{names:?}: {err}"
        );
        assert_eq!(stdout(&out), "", "{names:?}");
    }
}

const RECIPE: &str = r#"name: lookup
on: { connector: zendesk, event: ticket.created }
steps:
  - id: contact
    call: hubspot.search_contact_by_email
    with: { email: "{{ event.ticket.requester.email }}" }
  - id: note
    if: [ { "$.steps.contact.id": { exists: true } } ]
    call: zendesk.add_internal_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "contact {{ steps.contact.id }}" }
tests:
"#;

const EVENT: &str =
    "{ type: ticket.created, ticket: { id: 5, subject: Hi, requester: { email: a@b.c } } }";

#[test]
fn a_wrong_expectation_fails_and_prints_the_difference() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "lookup",
        &format!(
            "{RECIPE}  - name: right
    event: {EVENT}
    mock:
      hubspot.search_contact_by_email: {{ id: \"9\" }}
      zendesk.add_internal_note: {{ id: 5 }}
    expect_calls: [hubspot.search_contact_by_email, zendesk.add_internal_note]
    expect_inputs:
      note: {{ ticket_id: 5, body: contact 9 }}
  - name: wrong
    event: {EVENT}
    mock:
      hubspot.search_contact_by_email: {{ id: \"9\" }}
      zendesk.add_internal_note: {{ id: 5 }}
    expect_calls: [hubspot.search_contact_by_email]
    expect_inputs:
      note: {{ body: contact 10 }}
    expect_status: failed
"
        ),
    );
    let out = run_tests(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "ok   lookup › right
FAIL lookup › wrong
     calls: expected [hubspot.search_contact_by_email]
                 got [hubspot.search_contact_by_email, zendesk.add_internal_note]
     step `note` input `body`: expected \"contact 10\"
                                    got \"contact 9\"
     status: expected failed, got succeeded

1 passed, 1 failed (1 recipe(s))
"
    );
}

#[test]
fn a_call_without_a_mock_fails_the_test_naming_the_call() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "lookup",
        &format!(
            "{RECIPE}  - name: note unmocked
    event: {EVENT}
    mock:
      hubspot.search_contact_by_email: {{ id: \"9\" }}
    expect_calls: [hubspot.search_contact_by_email, zendesk.add_internal_note]
"
        ),
    );
    let out = run_tests(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "FAIL lookup › note unmocked
     call `zendesk.add_internal_note` (step `note`) has no mock: add `zendesk.add_internal_note:` under `mock:`

0 passed, 1 failed (1 recipe(s))
"
    );
}

#[test]
fn a_mocked_error_fails_the_run() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "lookup",
        &format!(
            "{RECIPE}  - name: crm down
    event: {EVENT}
    mock:
      hubspot.search_contact_by_email: {{ error: {{ status: 502, body: Bad Gateway }} }}
    expect_calls: [hubspot.search_contact_by_email]
"
        ),
    );
    let out = run_tests(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "FAIL lookup › crm down
     status: expected succeeded, got failed: step `contact` (hubspot.search_contact_by_email) failed: \
         HTTP 502: Bad Gateway (the hub would retry this call and make the run dead if it kept failing)

0 passed, 1 failed (1 recipe(s))
"
    );
}

/// `check` (and `test`) on a recipe whose `tests:` hold `tests` fail with
/// exactly these `lookup.yaml:line:column: message` lines.
#[track_caller]
fn tests_rejected(tests: &str, expected: &[(usize, usize, &str)]) {
    let cfg = Config::connectors_only();
    let file = cfg.recipe("lookup", &format!("{RECIPE}{tests}"));
    let mut want: String = expected
        .iter()
        .map(|(line, col, msg)| format!("{}:{line}:{col}: {msg}\n", file.display()))
        .collect();
    want.push_str(&format!("error: {} problem(s) found\n", expected.len()));
    for out in [cfg.check(), run_tests(&cfg, &[])] {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
        assert_eq!(stderr(&out), want);
    }
}

// RECIPE is 11 lines; the first test starts on line 12.

#[test]
fn a_mock_for_an_unknown_action_is_a_check_error() {
    tests_rejected(
        &format!(
            "  - name: t
    event: {EVENT}
    mock:
      hubspot.search_contact_by_email: {{ id: \"9\" }}
      hubspot.find_contact: {{ id: \"9\" }}
    expect_calls: [hubspot.search_contact_by_email, zendesk.add_internal_note]
"
        ),
        &[(
            16,
            7,
            "unknown action `find_contact` of connector `hubspot`, expected one of \
             `enroll_in_workflow`, `get_contact`, `search_contact_by_email`",
        )],
    );
}

#[test]
fn expectations_must_name_real_calls_steps_and_inputs() {
    tests_rejected(
        &format!(
            "  - name: t
    event: {EVENT}
    mock:
      zendesk.add_tags: {{ error: {{ status: 200 }} }}
    expect_calls: [zendesk.add_tags, hubspot.search_contact]
    expect_inputs:
      contacts: {{ email: a@b.c }}
      note: {{ text: x }}
    expect_status: done
"
        ),
        // A serde error (the status value) stops the file before the rest is checked.
        &[(
            20,
            20,
            "unknown variant `done`, expected one of `succeeded`, `failed`, `skipped`, `waiting`, `cancelled`",
        )],
    );
    tests_rejected(
        &format!(
            "  - name: t
    event: {EVENT}
    mock:
      zendesk.add_tags: {{ error: {{ status: 200 }} }}
    expect_calls: [zendesk.add_tags, hubspot.search_contact]
    expect_inputs:
      contacts: {{ email: a@b.c }}
      note: {{ text: x }}
  - name: t
    event: {{ type: ticket.created }}
    event_type: ticket.updated
    expect_calls: [zendesk.add_internal_note]
    expect_status: skipped
"
        ),
        &[
            (15, 44, "mocked error status 200 is not an HTTP error, expected 400-599"),
            (16, 20, "no step of this recipe calls `zendesk.add_tags`, so it is never called"),
            (
                16,
                38,
                "unknown action `search_contact` of connector `hubspot`, expected one of \
                 `enroll_in_workflow`, `get_contact`, `search_contact_by_email`",
            ),
            (18, 7, "unknown step id `contacts`, expected one of `contact`, `note`"),
            (
                19,
                15,
                "step `note` has no input `text` in its `with:`, expected one of `body`, `ticket_id`",
            ),
            (20, 11, "duplicate test name `t`"),
            (
                22,
                17,
                "`event_type: ticket.updated` is not what connector `zendesk` reads: the type \
                 comes from `$.type` of the event, which gives `ticket.created`; leave `event_type` out",
            ),
            (23, 19, "a skipped run calls nothing: `expect_calls` must be `[]`"),
        ],
    );
}

/// A connector that reads the event type from a header (like GitHub's
/// `X-GitHub-Event`): a test must say which type its event arrives as.
#[test]
fn event_types_read_from_headers_are_given_in_the_test() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "forge",
        "name: forge
base_url: https://forge.example
secrets: [webhook_secret]
webhook:
  signature: { scheme: github, secret: webhook_secret }
  event_type: { header: X-Forge-Event }
actions:
  comment:
    inputs: { issue: {}, text: {} }
    method: POST
    path: \"/issues/{{ input.issue }}/comments\"
    body: { text: \"{{ input.text }}\" }
",
    );
    let recipe = "name: greet
on: { connector: forge, event: issues }
if: [ { \"$.event.action\": { equals: opened } } ]
steps:
  - id: hello
    call: forge.comment
    with: { issue: \"{{ event.issue.number }}\", text: Thanks! }
tests:
";
    let file = cfg.recipe(
        "greet",
        &format!("{recipe}  - name: no type\n    event: {{ action: opened, issue: {{ number: 3 }} }}\n    expect_calls: [forge.comment]\n"),
    );
    let out = run_tests(&cfg, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:9:5: connector `forge` reads the event type from the `X-Forge-Event` header: \
             give the test an `event_type:`\nerror: 1 problem(s) found\n",
            file.display()
        )
    );

    cfg.recipe(
        "greet",
        &format!(
            "{recipe}  - name: opened issue
    event_type: issues
    event: {{ action: opened, issue: {{ number: 3 }} }}
    mock: {{ forge.comment: {{}} }}
    expect_calls: [forge.comment]
    expect_inputs: {{ hello: {{ issue: 3, text: Thanks! }} }}
  - name: closed issue
    event_type: issues
    event: {{ action: closed, issue: {{ number: 3 }} }}
    expect_calls: []
    expect_status: skipped
  - name: a push
    event_type: push
    event: {{ action: opened }}
    expect_calls: []
    expect_status: skipped
"
        ),
    );
    let out = run_tests(&cfg, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        "ok   greet › opened issue\nok   greet › closed issue\nok   greet › a push\n\n3 passed, 0 failed (1 recipe(s))\n"
    );
}

#[test]
fn recipes_without_tests_are_listed() {
    let cfg = Config::connectors_only();
    cfg.recipe("lookup", RECIPE.trim_end_matches("tests:\n"));
    let out = run_tests(&cfg, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\nno tests: lookup\n0 passed, 0 failed (1 recipe(s))\n"
    );
}
