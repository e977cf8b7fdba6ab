// Checks Grafana dashboard JSON files against Grafana's published dashboard
// schema: the `Dashboard` type of npm's @grafana/schema (the types Grafana
// generates from its dashboard kind, `raw/dashboard/x/types.gen`), turned into
// a JSON schema by ts-json-schema-generator and applied with ajv.
//
//   node check.mjs FILE.json...   -> prints {"FILE": [errors]} and exits 1 if
//                                    any file breaks the schema (2 on misuse)
//
// What it catches: a missing required field (schemaVersion; a panel's type;
// gridPos h/w/x/y; a variable's name and type; an annotation's datasource,
// enable, iconColor, name), a field of the wrong type or outside its enum
// (a string gridPos width, an unknown variable type, refresh 3), and any key
// the schema does not know on the dashboard, its panels, rows, variables,
// annotations, links and field configuration (a typo such as "gridpos").
//
// What it cannot catch: whatever Grafana leaves to plugins. A panel's
// `options` and `fieldConfig.defaults.custom`, and each query (`targets`),
// are open objects here as in Grafana, so a wrong option name or a broken
// query passes; the queries are checked by running them
// (tests/tests/dashboards.rs). The schema is of the latest schemaVersion:
// Grafana would migrate an older dashboard on import, this check would not.
//
// One relaxation, on purpose: an annotation's `target` is typed in
// @grafana/schema as the built-in Grafana data source's (limit, matchAny,
// tags, type; its own comment says "Only required/valid for the grafana
// datasource"), while other data sources keep their query there too (the
// InfluxDB one its `query`, `textColumn`...). Extra keys are allowed in it.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createGenerator } from 'ts-json-schema-generator';
import Ajv from 'ajv';

const require = createRequire(import.meta.url);

export function dashboardSchema() {
  const types = join(
    dirname(require.resolve('@grafana/schema/package.json')),
    'dist/types/raw/dashboard/x/types.gen.d.ts',
  );
  const schema = createGenerator({
    path: types,
    type: 'Dashboard',
    // Unknown keys are errors, except where the types say "any object".
    additionalProperties: false,
    skipTypeCheck: true,
    expose: 'all',
    topRef: true,
    jsDoc: 'none',
  }).createSchema('Dashboard');
  const target = schema.definitions?.AnnotationTarget;
  if (!target) {
    throw new Error('@grafana/schema has no AnnotationTarget: check the pinned version');
  }
  target.additionalProperties = true;
  return schema;
}

function main(files) {
  if (files.length === 0) {
    console.error('usage: node check.mjs DASHBOARD.json...');
    process.exit(2);
  }
  const ajv = new Ajv({ allErrors: true, strict: false });
  const validate = ajv.compile(dashboardSchema());
  const report = {};
  let failed = false;
  for (const file of files) {
    let dashboard;
    try {
      dashboard = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      report[file] = [{ message: `not JSON: ${e.message}` }];
      failed = true;
      continue;
    }
    if (validate(dashboard)) {
      report[file] = [];
    } else {
      report[file] = validate.errors.map((e) => ({
        path: e.instancePath,
        message: e.message,
        params: e.params,
      }));
      failed = true;
    }
  }
  console.log(JSON.stringify(report, null, 1));
  process.exit(failed ? 1 : 0);
}

main(process.argv.slice(2));
