// Every suite and target module the `conform` command loads. A later suite (fleecing,
// permissions, interleavings) adds its import line here; the module calls registerSuite() and
// registerTarget() itself.
import './targets/builtin.ts';
import './targets/tls.ts';
import './cases/nbd/index.ts';
import './fleecing/index.ts';
import './permissions/index.ts';
import './interleavings/index.ts';
import './monitor/index.ts';
import './backup/index.ts';
