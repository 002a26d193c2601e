//! The loaded set of connectors and recipes, checked as a whole, with the
//! recipe index on (connector, event type).

use super::step::wait::wait_tag;
use crate::connector::{self, Connectors, SecretSource};
use crate::recipe::steps::Awaited;
use crate::recipe::{self, condition, Recipe, StepKind};
use crate::store::{Correlation, Listen};
use crate::template::Templates;
use crate::yaml::LoadError;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

/// Where to load from.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub connectors_dir: PathBuf,
    pub recipes_dir: PathBuf,
    pub secrets: SecretSource,
    /// Connectors allowed to call internal addresses (`*` = all).
    pub allow_internal: Vec<String>,
}

#[derive(Debug)]
pub struct Catalog {
    /// What it was loaded from: [`files_version`] of the directories, taken
    /// before they were read (so a change during the load shows as a
    /// difference on the next look, never the reverse).
    pub version: String,
    pub templates: Templates,
    pub connectors: Connectors,
    pub recipes: Vec<Recipe>,
    /// Recipe positions by (connector, event type): matching never scans every recipe.
    /// connector → event type → recipe positions; nested so a lookup borrows
    /// the event's strings instead of allocating a key per event.
    index: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Recipe positions by name, for workers resolving a run's recipe.
    by_name: HashMap<String, usize>,
    /// Who waits for events of (connector, event type): `wait_for` steps
    /// and `cancel_on` entries. Each incoming event renders one key per
    /// listener here and probes the store with it — waiting runs are never scanned.
    listeners: HashMap<String, HashMap<String, Vec<Listener>>>,
    /// Things that work but deserve a look (`signature: none`).
    pub warnings: Vec<LoadError>,
}

/// A `wait_for` step or `cancel_on` entry waiting for events of one type.
#[derive(Debug)]
struct Listener {
    recipe: usize,
    listen: Listen,
    awaited: Awaited,
    tag: String,
}

impl Catalog {
    /// Load and check everything; all errors are returned, not only the first.
    pub fn load(opts: &LoadOptions) -> Result<Catalog, Vec<LoadError>> {
        let (catalog, errors) = Catalog::load_lenient(opts);
        if errors.is_empty() {
            Ok(catalog)
        } else {
            Err(errors)
        }
    }

    /// Like [`Catalog::load`], but a recipe with an error is left out instead
    /// of failing the whole set: the catalog of every recipe that compiled,
    /// and every error found (sorted by file and position). For `switchboard
    /// test NAME`, which runs the named recipes even when another file is
    /// broken; a hub serves only a catalog without errors.
    pub fn load_lenient(opts: &LoadOptions) -> (Catalog, Vec<LoadError>) {
        let version = files_version(opts);
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut templates = Templates::new();
        let copts = connector::LoadOptions {
            secrets: &opts.secrets,
            allow_internal: &opts.allow_internal,
        };
        let mut connectors = connector::load_dir(
            &opts.connectors_dir,
            &mut templates,
            &copts,
            &mut errors,
            &mut warnings,
        );
        let recipes = recipe::load_dir(
            &opts.recipes_dir,
            &connectors,
            &mut templates,
            &mut errors,
            &mut warnings,
        );
        // A missing secret stops the hub only if a recipe needs the connector.
        let used: std::collections::BTreeSet<&str> =
            recipes.iter().flat_map(Recipe::connectors_used).collect();
        connectors.drop_unusable(|c| used.contains(c), &mut errors, &mut warnings);
        errors.sort_by(|a, b| {
            (&a.file, a.pos.line, a.pos.column).cmp(&(&b.file, b.pos.line, b.pos.column))
        });
        reply_warnings(&recipes, &mut warnings);
        update_warnings(&recipes, &mut warnings);
        loop_warnings(&recipes, &mut warnings);
        let mut catalog = Catalog::new(templates, connectors, recipes, warnings);
        catalog.version = version;
        (catalog, errors)
    }

    pub fn new(
        templates: Templates,
        connectors: Connectors,
        recipes: Vec<Recipe>,
        warnings: Vec<LoadError>,
    ) -> Catalog {
        let mut index: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        let mut by_name = HashMap::new();
        let mut listeners: HashMap<String, HashMap<String, Vec<Listener>>> = HashMap::new();
        for (i, r) in recipes.iter().enumerate() {
            let mut add = |listen, a: &Awaited, tag: String| {
                listeners
                    .entry(a.connector.clone())
                    .or_default()
                    .entry(a.event.clone())
                    .or_default()
                    .push(Listener {
                        recipe: i,
                        listen,
                        awaited: a.clone(),
                        tag,
                    });
            };
            for c in &r.cancel_on {
                add(Listen::Cancel, c, r.name.clone());
            }
            let mut all = Vec::new();
            for s in &r.steps {
                s.walk(&mut all);
            }
            for s in all {
                if let StepKind::WaitFor(f) = &s.kind {
                    add(Listen::Wake, &f.awaited, wait_tag(&r.name, &s.id));
                }
            }
            by_name.insert(r.name.clone(), i);
            index
                .entry(r.connector.clone())
                .or_default()
                .entry(r.event.clone())
                .or_default()
                .push(i);
        }
        // Conditions asked about the same events share their `matches`
        // regexes: one regex for many distinct patterns.
        for by_type in index.values() {
            for positions in by_type.values() {
                condition::share_regexes(positions.iter().map(|&i| &recipes[i].condition));
            }
        }
        for by_type in listeners.values() {
            for list in by_type.values() {
                condition::share_regexes(list.iter().filter_map(|l| l.awaited.condition.as_ref()));
            }
        }
        Catalog {
            version: String::new(),
            templates,
            connectors,
            recipes,
            index,
            by_name,
            listeners,
            warnings,
        }
    }

    /// The store probes of an incoming event: for each listener on its
    /// (connector, event type) whose `if` holds, its `match` rendered on
    /// `{event, vars, run: {now}}`. `ctx` is a [`Catalog::trigger_context`].
    pub fn probes(
        &self,
        connector: &str,
        event_type: Option<&str>,
        ctx: &mut Value,
    ) -> Vec<Correlation> {
        let Some(list) = event_type.and_then(|t| self.listeners.get(connector)?.get(t)) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(list.len());
        for l in list {
            let r = &self.recipes[l.recipe];
            ctx["vars"] = r.vars.clone();
            if l.awaited
                .condition
                .as_ref()
                .is_some_and(|c| !c.eval_with(ctx, &self.templates))
            {
                continue;
            }
            match self.templates.render_string(&l.awaited.matcher, ctx) {
                Ok(key) if !key.is_empty() => out.push(Correlation {
                    listen: l.listen,
                    connector: l.awaited.connector.clone(),
                    event_type: l.awaited.event.clone(),
                    key,
                    tag: l.tag.clone(),
                }),
                // An event without the field matches nothing of this listener.
                Ok(_) | Err(_) => {}
            }
        }
        out
    }

    /// The trigger context of an event: `{event, vars, steps: {}, run: {now}}`, with
    /// `vars` set per recipe by [`Catalog::triggered`].
    pub fn trigger_context(event: Value, now: i64) -> Value {
        // Built field by field: `json!` would copy `event` through its
        // serializer (an allocation per node of the body) instead of moving it.
        let mut ctx = serde_json::Map::new();
        ctx.insert("event".into(), event);
        ctx.insert("vars".into(), Value::Null);
        ctx.insert("steps".into(), Value::Object(Default::default()));
        ctx.insert("run".into(), json!({ "now": now }));
        Value::Object(ctx)
    }

    /// The one trigger path, used by `Engine::accept`, the dry run of
    /// `switchboard test` and the matching bench: for each recipe on this
    /// connector's event type (through the index) whose `if` holds, call
    /// `started` with the recipe and `ctx` (a [`Catalog::trigger_context`])
    /// holding that recipe's `vars`. No event type, no recipe.
    pub fn triggered<'a>(
        &'a self,
        connector: &str,
        event_type: Option<&str>,
        ctx: &mut Value,
        mut started: impl FnMut(&'a Recipe, &Value),
    ) {
        let Some(event_type) = event_type else {
            return;
        };
        for r in self.matching(connector, event_type) {
            ctx["vars"] = r.vars.clone();
            if r.condition.eval_with(ctx, &self.templates) {
                started(r, ctx);
            }
        }
    }

    /// Recipes on this connector's event type, before their `if`.
    fn matching<'a>(
        &'a self,
        connector: &str,
        event_type: &str,
    ) -> impl Iterator<Item = &'a Recipe> + 'a {
        self.index
            .get(connector)
            .and_then(|by_type| by_type.get(event_type))
            .into_iter()
            .flatten()
            .map(|&i| &self.recipes[i])
    }

    pub fn recipe(&self, name: &str) -> Option<&Recipe> {
        self.by_name.get(name).map(|&i| &self.recipes[i])
    }
}

/// The version of the files a catalog loads: the first 12 hex digits of a
/// SHA-256 over the name and text of every `.yaml`/`.yml` file of the
/// connectors and recipes directories (the files `Catalog::load` reads;
/// not secrets). Reading ~20 small files costs well under a millisecond,
/// so the hub's file watcher compares this instead of trusting mtimes,
/// which miss two saves within the filesystem's time granularity.
pub fn files_version(opts: &LoadOptions) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for dir in [&opts.connectors_dir, &opts.recipes_dir] {
        h.update(b"dir\0");
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect(),
            Err(e) => {
                h.update(e.to_string().as_bytes());
                Vec::new()
            }
        };
        paths.sort();
        for p in paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            h.update(name.unwrap_or_default().as_bytes());
            h.update(b"\0");
            match std::fs::read(&p) {
                Ok(bytes) => {
                    h.update((bytes.len() as u64).to_be_bytes());
                    h.update(&bytes);
                }
                Err(e) => h.update(e.to_string().as_bytes()),
            }
        }
    }
    hex::encode(h.finalize())[..12].to_string()
}

/// A recipe triggered by an event that one of its own calls makes the app
/// send again (the action's `causes:`, e.g. `update_ticket` on
/// `ticket.updated`), with neither a recipe `if:` nor a guard on the way to
/// that step — its own `if:`, or an enclosing step's, or the `when:` of the
/// `switch` case it is in (an `else` case guards nothing) — to tell its own
/// update apart: `check` warns, at the step, that it may loop.
fn loop_warnings(recipes: &[Recipe], warnings: &mut Vec<LoadError>) {
    use crate::recipe::steps::{Step, StepKind};
    fn walk<'a>(r: &Recipe, steps: &'a [Step], out: &mut Vec<&'a Step>) {
        for s in steps.iter().filter(|s| s.condition.is_none()) {
            match &s.kind {
                StepKind::Call(c)
                    if c.connector.name == r.connector && c.action.causes.contains(&r.event) =>
                {
                    out.push(s)
                }
                StepKind::ForEach(f) => walk(r, &f.steps, out),
                StepKind::Switch(sw) => {
                    for case in sw.cases.iter().filter(|c| c.when.is_none()) {
                        walk(r, &case.steps, out);
                    }
                }
                _ => {}
            }
        }
    }
    use crate::recipe::{LoopBreaker, LOOP_BREAKER_MAX, LOOP_BREAKER_WITHIN};
    for r in recipes
        .iter()
        .filter(|r| r.condition.is_always() && r.loop_breaker != LoopBreaker::Declared)
    {
        let mut unguarded = Vec::new();
        walk(r, &r.steps, &mut unguarded);
        let breaker = match r.loop_breaker {
            LoopBreaker::Default => format!("; the default loop breaker pauses it for an object after {LOOP_BREAKER_MAX} runs within {LOOP_BREAKER_WITHIN}"),
            LoopBreaker::Off => "; its loop breaker is off".to_string(),
            _ => format!("; no loop breaker: connector `{}` declares no `webhook.object_key`, so add `loop_breaker: {{ key: … }}`", r.connector),
        };
        for step in unguarded {
            warnings.push(LoadError {
                file: r.file.clone(),
                pos: step.at,
                message: format!(
                    "warning: recipe `{}` runs on `{}` `{}` and its step `{}` causes that event again, with no `if:` on the recipe or the step (nor a `switch` case's `when:`) to tell its own update apart: it may loop (add a guard, e.g. skip when the update is already done){breaker}",
                    r.name, r.connector, r.event, step.id
                ),
            });
        }
    }
}

/// The recipes that share a trigger (connector and event) with another,
/// each trigger's by name.
fn sharing_a_trigger<'a>(
    recipes: impl Iterator<Item = &'a Recipe>,
) -> Vec<((&'a str, &'a str), Vec<&'a Recipe>)> {
    let mut by_trigger: HashMap<(&str, &str), Vec<&Recipe>> = HashMap::new();
    for r in recipes {
        by_trigger
            .entry((&r.connector, &r.event))
            .or_default()
            .push(r);
    }
    by_trigger
        .into_iter()
        .filter(|(_, rs)| rs.len() >= 2)
        .map(|(trigger, mut rs)| {
            rs.sort_by(|a, b| a.name.cmp(&b.name));
            (trigger, rs)
        })
        .collect()
}

/// Recipes on one trigger that each declare a `reply:`: when several match
/// one event, the first by name answers; `check` says so at the others.
fn reply_warnings(recipes: &[Recipe], warnings: &mut Vec<LoadError>) {
    let replying = recipes.iter().filter(|r| r.reply.is_some());
    for ((connector, event), rs) in sharing_a_trigger(replying) {
        for r in &rs[1..] {
            if let Some(reply) = &r.reply {
                warnings.push(LoadError {
                    file: r.file.clone(),
                    pos: reply.at,
                    message: format!(
                        "warning: recipes `{}` and `{}` both reply to `{connector}` `{event}` events; when both match, `{}` answers (the first by name) and this `reply:` is not sent",
                        rs[0].name, r.name, rs[0].name
                    ),
                });
            }
        }
    }
}

/// An action that sets fields of an object (a later call overwrites an
/// earlier one): `PUT` or `PATCH`, named `update…` or `set…`. Actions that
/// add to an object (`add_internal_note`, `add_tags`) commute and are not.
fn is_update(c: &crate::recipe::steps::CallStep) -> bool {
    matches!(c.action.method.as_str(), "PUT" | "PATCH")
        && (c.action.name.starts_with("update") || c.action.name.starts_with("set"))
}

/// What an update call sets: each `with:` input, or for a mapping input
/// each of its keys (`fields.priority`); inputs naming the object (`id`,
/// `…_id` at the top level) are not changes.
fn fields_set(c: &crate::recipe::steps::CallStep) -> BTreeSet<String> {
    use crate::template::ValueTemplate;
    let mut out = BTreeSet::new();
    for (name, value) in &c.with {
        if name == "id" || name.ends_with("_id") {
            continue;
        }
        match value {
            ValueTemplate::Object(fields) => {
                out.extend(fields.iter().map(|(k, _)| format!("{name}.{k}")));
            }
            ValueTemplate::Literal(Value::Object(fields)) => {
                out.extend(fields.keys().map(|k| format!("{name}.{k}")));
            }
            _ => {
                out.insert(name.clone());
            }
        }
    }
    out
}

/// Recipes on one trigger that both call the same updating action
/// ([`is_update`]) and set the same field ([`fields_set`]): their runs for
/// one event are not ordered (no order is promised between runs of
/// different recipes), so whichever call comes last wins. `check` warns at
/// the later recipe's step (by name).
fn update_warnings(recipes: &[Recipe], warnings: &mut Vec<LoadError>) {
    for ((connector, event), rs) in sharing_a_trigger(recipes.iter()) {
        // action name → the recipes calling it so far, with what they set
        let mut first: HashMap<String, Vec<(&Recipe, BTreeSet<String>)>> = HashMap::new();
        for r in rs {
            // Steps after a top-level wait run later, not beside the other
            // recipe's run for this event.
            let mut all = Vec::new();
            for s in &r.steps {
                if matches!(
                    s.kind,
                    StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::WaitFor(_)
                ) {
                    break;
                }
                s.walk(&mut all);
            }
            let mut seen = std::collections::HashSet::new();
            for s in all {
                let StepKind::Call(c) = &s.kind else { continue };
                if !is_update(c) {
                    continue;
                }
                let action = c.name();
                let sets = fields_set(c);
                if !seen.insert((action.clone(), sets.clone())) {
                    continue;
                }
                let earlier = first.entry(action.clone()).or_default();
                if let Some((e, both)) = earlier.iter().find_map(|(e, theirs)| {
                    let both: Vec<_> = theirs.intersection(&sets).cloned().collect();
                    (e.name != r.name && !both.is_empty()).then_some((e, both))
                }) {
                    warnings.push(LoadError {
                        file: r.file.clone(),
                        pos: s.at,
                        message: format!(
                            "warning: recipes `{}` and `{}` both set {} through `{action}` on `{connector}` `{event}` events; \
                             runs of different recipes are not ordered, so the last call wins. \
                             Make them one recipe (a `switch`, or a shared scenario) to order the updates",
                            e.name,
                            r.name,
                            both.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", "),
                        ),
                    });
                }
                earlier.push((r, sets));
            }
        }
    }
}
