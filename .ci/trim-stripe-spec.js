// Trim Stripe's OpenAPI document to the operations the `stripe` connector
// calls, for Prism (tests/it/prism.rs). Usage: node trim-stripe-spec.js IN OUT
//
// What it keeps, as tests/fixtures/apis/SOURCES.md describes for the kit's
// trimmed files: the listed operations (with their path-level parameters),
// every top-level field but `paths` and `components.schemas`, and the
// transitive closure of the schemas they reach. One named patch, so Prism can
// start on it (the whole document, or its plain closure, has hundreds of
// circular references and Prism does not start within minutes):
//
//   stripe-unexpanded: an expandable field (listed in its schema's
//   `x-expandableFields`) keeps only its non-`$ref` alternatives — the id
//   string Stripe answers with unless the request asks `expand[]` — and
//   loses `x-expansionResources`. Only answers change; request parameters,
//   bodies and security are as published.
'use strict';
const fs = require('fs');

const OPERATIONS = [
  ['/v1/customers/search', 'get'], // stripe.find_customer_by_email
  ['/v1/subscriptions', 'get'], // stripe.list_subscriptions
];
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error('usage: node trim-stripe-spec.js IN OUT');
  process.exit(2);
}
const doc = JSON.parse(fs.readFileSync(input, 'utf8'));
const schemas = doc.components.schemas;

function unexpand(schema) {
  if (Array.isArray(schema)) return schema.forEach(unexpand);
  if (!schema || typeof schema !== 'object') return;
  const expandable = new Set(schema['x-expandableFields'] || []);
  const props = schema.properties || {};
  for (const name of Object.keys(props)) {
    const p = props[name];
    if (!expandable.has(name) || !Array.isArray(p.anyOf)) continue;
    const plain = p.anyOf.filter((a) => !('$ref' in a));
    if (plain.length === 0) continue;
    const out = {};
    for (const [k, v] of Object.entries(p)) {
      if (k !== 'anyOf' && k !== 'x-expansionResources') out[k] = v;
    }
    if (plain.length === 1) Object.assign(out, plain[0]);
    else out.anyOf = plain;
    props[name] = out;
  }
  Object.values(schema).forEach(unexpand);
}
Object.values(schemas).forEach(unexpand);

const paths = {};
for (const [path, method] of OPERATIONS) {
  const item = doc.paths[path];
  if (!item || !item[method]) {
    console.error(`trim-stripe-spec: ${method.toUpperCase()} ${path} is not in ${input}`);
    process.exit(1);
  }
  if (!paths[path]) {
    paths[path] = {};
    for (const [k, v] of Object.entries(item)) if (!METHODS.includes(k)) paths[path][k] = v;
  }
  paths[path][method] = item[method];
}

const kept = new Map();
function walk(v) {
  if (Array.isArray(v)) return v.forEach(walk);
  if (!v || typeof v !== 'object') return;
  const ref = v.$ref;
  if (typeof ref === 'string' && ref.startsWith('#/components/schemas/')) {
    const name = ref.slice('#/components/schemas/'.length);
    if (!kept.has(name)) {
      kept.set(name, schemas[name]);
      walk(schemas[name]);
    }
  }
  Object.values(v).forEach(walk);
}
walk(paths);

const out = {};
for (const [k, v] of Object.entries(doc)) if (k !== 'paths' && k !== 'components') out[k] = v;
out.paths = paths;
out.components = {};
for (const [k, v] of Object.entries(doc.components)) if (k !== 'schemas') out.components[k] = v;
out.components.schemas = {};
for (const name of [...kept.keys()].sort()) out.components.schemas[name] = kept.get(name);
out['x-switchboard-patches'] = ['stripe-unexpanded'];
fs.writeFileSync(output, JSON.stringify(out, null, 1));
console.log(`trim-stripe-spec: ${OPERATIONS.length} operations, ${kept.size} schemas -> ${output}`);
