// The spec layer's one error class. Everything the explorer, replay, the registry and the
// `fleece explore` CLI refuse (bad parameters, a tampered trace file, a graph too large to
// draw) is a SpecError carrying the context a user needs to fix it.

export class SpecError extends Error {
  /** Where the problem is: a file path, "steps[3]", a flag name. */
  readonly where: string | undefined;

  constructor(message: string, where?: string) {
    super(where === undefined ? message : `${where}: ${message}`);
    this.name = 'SpecError';
    this.where = where;
  }
}
