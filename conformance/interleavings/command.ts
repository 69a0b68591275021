// `fleece interleave`: the interleavings suite's own command (full per-interleaving report,
// replay of one interleaving); `fleece conform --suite interleavings` carries the summary.
import type { Subcommand } from '../../cli/main.ts';
import { main } from './cli.ts';

const command: Subcommand = {
  summary: 'drive every model interleaving of the fleecing scenarios through an implementation over NBD',
  run: (argv) => main(argv),
};
export default command;
