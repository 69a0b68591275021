// The `fleece` command: one subcommand per pillar. Each subcommand lives with its pillar and is
// loaded lazily, so `fleece explore` never loads the reference and `fleece conform` never loads
// spec code it does not need. Exit codes: 0 ok, 1 a verdict failed, 2 usage or harness error.

export interface Subcommand {
  readonly summary: string;
  /** Runs the subcommand; resolves to the process exit code. */
  run(argv: string[]): Promise<number>;
}

type Loader = () => Promise<Subcommand>;

const SUBCOMMANDS: Record<string, Loader> = {};

/** Registers a subcommand; pillars call this from cli/commands.ts. */
export function registerSubcommand(name: string, loader: Loader): void {
  SUBCOMMANDS[name] = loader;
}

function usage(): string {
  const names = Object.keys(SUBCOMMANDS).sort();
  return [
    'usage: fleece <command> [options]',
    '',
    'commands:',
    ...names.map((n) => `  ${n}`),
    '',
    "run 'fleece <command> --help' for a command's options",
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  // `fleece ... | head`: a reader that goes away is not an error of ours; stop quietly, as Unix
  // tools do, instead of printing an EPIPE stack trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
  await import('./commands.ts');
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage() + '\n');
    return name === undefined ? 2 : 0;
  }
  const loader = SUBCOMMANDS[name];
  if (!loader) {
    process.stderr.write(`fleece: unknown command '${name}'\n\n${usage()}\n`);
    return 2;
  }
  const cmd = await loader();
  return cmd.run(rest);
}
