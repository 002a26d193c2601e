//! Evaluating a compiled condition tree against a run context (and the
//! tree walks the loader uses: binding calendars and templates, listing
//! paths). No I/O, no parsing, no panics.

use super::compare::{compare, loose_eq, scalar_text};
use super::*;
use std::cmp::Ordering;

impl Node {
    pub(super) fn eval(&self, ctx: &Value, templates: Option<&Templates>) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.eval(ctx, templates)),
            Node::Any(nodes) => nodes.iter().any(|n| n.eval(ctx, templates)),
            Node::Not(node) => !node.eval(ctx, templates),
            Node::Path(test) => {
                // The query cannot fail on a parsed path; if the library ever
                // reports an error, treat the path as missing.
                let nodes: Vec<&Value> = js_path_process(test.query.as_ref(), ctx)
                    .map(|refs| refs.into_iter().map(|r| r.val).collect())
                    .unwrap_or_default();
                test.ops.iter().all(|op| op.holds(&nodes, ctx, templates))
            }
            Node::BusinessHours(b) => {
                let Some(cal) = &b.calendar else { return false };
                let at = match &b.at {
                    Some((_, q)) => js_path_process(q.as_ref(), ctx)
                        .ok()
                        .and_then(|refs| refs.into_iter().next().map(|r| r.val.clone())),
                    None => ctx.get("run").and_then(|r| r.get("now")).cloned(),
                };
                at.and_then(|v| crate::time::instant(&v).ok())
                    .is_some_and(|t| cal.is_open(t))
            }
        }
    }

    pub(super) fn bind(&mut self, calendars: &Calendars, errors: &mut Vec<(String, String)>) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => {
                nodes.iter_mut().for_each(|n| n.bind(calendars, errors));
            }
            Node::Not(node) => node.bind(calendars, errors),
            Node::Path(_) => {}
            Node::BusinessHours(b) => match calendars.get(&b.name) {
                Some(c) => b.calendar = Some(c.clone()),
                None => errors.push((
                    b.pointer.clone(),
                    crate::time::calendar::unknown(&b.name, calendars).0,
                )),
            },
        }
    }

    /// Every operator of the tree, in document order.
    pub(super) fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a Op)) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => nodes.iter().for_each(|n| n.visit(f)),
            Node::Not(node) => node.visit(f),
            Node::Path(test) => test.ops.iter().for_each(f),
            Node::BusinessHours(_) => {}
        }
    }

    pub(super) fn visit_ops(&mut self, f: &mut dyn FnMut(&mut Op)) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => nodes.iter_mut().for_each(|n| n.visit_ops(f)),
            Node::Not(node) => node.visit_ops(f),
            Node::Path(test) => {
                for op in test.ops.iter_mut() {
                    f(op);
                }
            }
            Node::BusinessHours(_) => {}
        }
    }

    pub(super) fn collect_paths(&self, out: &mut Vec<(String, String)>) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => {
                nodes.iter().for_each(|n| n.collect_paths(out));
            }
            Node::Not(node) => node.collect_paths(out),
            Node::Path(test) => out.push((test.pointer.clone(), test.source.clone())),
            Node::BusinessHours(b) => {
                if let Some((path, _)) = &b.at {
                    out.push((child(&b.pointer, "at"), path.clone()));
                }
            }
        }
    }
}

impl Op {
    /// Whether the operator holds over all the nodes a path selected.
    pub(super) fn holds(
        &self,
        nodes: &[&Value],
        ctx: &Value,
        templates: Option<&Templates>,
    ) -> bool {
        match self {
            Op::Templated {
                name,
                pointer,
                template,
                ..
            } => {
                // Rendered typed (`"{{ vars.min }}"` stays a number), then
                // the operator as if the value had been written; an operand
                // that does not render, or is of the wrong type, never holds.
                let (Some(t), Some(templates)) = (template, templates) else {
                    return false;
                };
                let Ok(operand) = templates.render(t, ctx) else {
                    return false;
                };
                compile_op(name, &operand, pointer).is_ok_and(|op| {
                    !matches!(op, Op::Templated { .. }) && op.holds(nodes, ctx, None)
                })
            }
            Op::Exists(want) => *want != nodes.is_empty(),
            Op::NotEquals(operand) => nodes.iter().all(|n| !loose_eq(n, operand)),
            _ => nodes.iter().any(|n| self.holds_for(n)),
        }
    }

    /// Whether the operator holds for one node (not `exists`/`not_equals`).
    fn holds_for(&self, node: &Value) -> bool {
        match self {
            Op::Equals(operand) => loose_eq(node, operand),
            Op::NotEquals(operand) => !loose_eq(node, operand),
            Op::In(items) => items.iter().any(|item| loose_eq(node, item)),
            Op::Contains { element, text } => match node {
                Value::Array(items) => items.iter().any(|item| loose_eq(item, element)),
                _ => match (scalar_text(node), text) {
                    (Some(haystack), Some(needle)) => haystack.contains(needle.as_str()),
                    _ => false,
                },
            },
            Op::Matches(m) => scalar_text(node).is_some_and(|s| m.is_match(&s)),
            Op::Exists(want) => *want,
            Op::Compare(cmp, operand) => compare(node, operand).is_some_and(|o| match cmp {
                Cmp::Gt => o == Ordering::Greater,
                Cmp::Gte => o != Ordering::Less,
                Cmp::Lt => o == Ordering::Less,
                Cmp::Lte => o != Ordering::Greater,
            }),
            Op::StartsWith(prefix) => {
                scalar_text(node).is_some_and(|s| s.starts_with(prefix.as_str()))
            }
            Op::EndsWith(suffix) => scalar_text(node).is_some_and(|s| s.ends_with(suffix.as_str())),
            Op::Templated { .. } => false,
        }
    }
}
