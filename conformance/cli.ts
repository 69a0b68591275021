// Placeholder until this pillar's subcommand lands.
import type { Subcommand } from '../cli/main.ts';

const command: Subcommand = {
  summary: 'not implemented yet',
  async run() {
    process.stderr.write('fleece: this command is not implemented yet\n');
    return 2;
  },
};
export default command;
