// Preloaded (NODE_OPTIONS=--import) into every node process while scripts/mutation-conform.mjs maps
// which conformance case reaches which mutant. Stryker's instrumented sources count each mutant
// they pass through in globalThis.__stryker__.mutantCoverage; at exit this process writes the ids
// it reached to FLEECE_MUTANT_COVERAGE_DIR/<pid>.json. A `fleece serve` the judge stops exits through
// its SIGTERM handler, so 'exit' runs; one killed outright loses its record, which the mapping
// run notices (a case with no record at all is an error there, not a case that reaches nothing).
import { writeFileSync } from 'node:fs';
import path from 'node:path';

const dir = process.env.FLEECE_MUTANT_COVERAGE_DIR;
if (dir) {
  process.on('exit', () => {
    const cov = globalThis.__stryker__?.mutantCoverage;
    if (!cov) return;
    const ids = new Set(Object.keys(cov.static ?? {}));
    for (const perTest of Object.values(cov.perTest ?? {})) for (const id of Object.keys(perTest)) ids.add(id);
    writeFileSync(path.join(dir, `${process.pid}.json`), JSON.stringify([...ids]));
  });
}
