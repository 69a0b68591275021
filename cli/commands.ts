// Subcommand table. Each pillar owns the module a line points at; add one line per subcommand.
import { registerSubcommand } from './main.ts';

void registerSubcommand;
