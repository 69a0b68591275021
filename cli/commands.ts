// Subcommand table. Each pillar owns the module a line points at.
import { registerSubcommand } from './main.ts';

registerSubcommand('serve', async () => (await import('../reference/src/daemon/cli.ts')).default);
registerSubcommand('explore', async () => (await import('../spec/cli.ts')).default);
registerSubcommand('conform', async () => (await import('../conformance/cli.ts')).default);
registerSubcommand('bench', async () => (await import('../bench/cli.ts')).default);
registerSubcommand('replay', async () => (await import('../conformance/replay/cli.ts')).default);
registerSubcommand('interleave', async () => (await import('../conformance/interleavings/command.ts')).default);
registerSubcommand('fuzz', async () => (await import('../conformance/fuzz/command.ts')).default);
