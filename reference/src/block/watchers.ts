// "Tell me when this holds": observers of an in-flight list (tracked requests, range lists),
// so tests and breakpoint users wait on state instead of sleeping.
export class Watchers {
  private list: Array<() => void> = [];

  /** Resolves once `pred()` holds; re-checked at every notify(). */
  until(pred: () => boolean): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve) => {
      const check = (): void => {
        if (!pred()) return;
        this.list = this.list.filter((w) => w !== check);
        resolve();
      };
      this.list.push(check);
    });
  }

  notify(): void {
    for (const w of [...this.list]) w();
  }
}
