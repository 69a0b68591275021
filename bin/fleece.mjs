#!/usr/bin/env node
// Entry point of the `fleece` command: loads the TypeScript sources through tsx (no build step),
// then hands over to the subcommand dispatcher.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
