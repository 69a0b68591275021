// Setups a suite starts for its cases (a daemon and its images per case, as the fleecing and
// backup suites do), each in a fresh subdirectory of the target's work dir, every one stopped at
// the end of the suite even when a case forgot to.
import fs from 'node:fs';
import path from 'node:path';

export class Lab<S extends { stop(): Promise<void> }> {
  private readonly running = new Set<S>();
  private n = 0;
  constructor(private readonly dir: string) {}

  /**
   * Runs `start` in a new directory. `wrap` returns the setup the case gets, with the given stop,
   * which stops the setup once (a second call waits for the first) and then removes the directory.
   */
  async launch(start: (dir: string) => Promise<S>, wrap: (s: S, stop: () => Promise<void>) => S): Promise<S> {
    const dir = path.join(this.dir, `setup-${++this.n}`);
    fs.mkdirSync(dir, { recursive: true });
    const s = await start(dir);
    let stopped: Promise<void> | undefined;
    const wrapped = wrap(s, () => {
      this.running.delete(wrapped);
      stopped ??= s.stop().finally(() => fs.rmSync(dir, { recursive: true, force: true }));
      return stopped;
    });
    this.running.add(wrapped);
    return wrapped;
  }

  async stopAll(): Promise<void> {
    for (const s of [...this.running]) await s.stop().catch(() => undefined);
    this.running.clear();
  }
}
