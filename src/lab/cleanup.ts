/**
 * The lab's undo registry: every namespace, link and child a lab makes registers how to remove it,
 * and the registry removes them in reverse order on success, on failure, on SIGINT/SIGTERM and, through
 * a synchronous path, on process exit (crashes included).
 */
import { constants as osConstants } from 'node:os';

/** One undo step. `sync` must work without the event loop (exit handlers); `async` is preferred otherwise. */
export interface UndoStep {
  label: string;
  sync: () => void;
  async?: () => Promise<void>;
}

const liveRegistries = new Set<Cleanup>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' also fires after an uncaught exception or rejection, so this covers crashes too.
  process.on('exit', () => {
    for (const c of [...liveRegistries].reverse()) c.runSync();
  });
}

export interface SignalTrap {
  /**
   * Resolves with the signal's name when SIGINT or SIGTERM arrives while this is pending; the
   * caller then cleans up itself. Without a pending wait, a signal runs the cleanup and exits.
   */
  wait(): Promise<NodeJS.Signals>;
  /** Remove the signal handlers. */
  release(): void;
}


/**
 * Everything a lab created, undone in reverse order. Steps run once: after `run()` the registry is
 * empty and can be reused. Registered with a process 'exit' hook while it holds steps, so normal
 * exit and crashes undo too (through the synchronous path).
 */
export class Cleanup {
  private steps: UndoStep[] = [];
  private running: Promise<void> | null = null;

  constructor(private readonly log: (line: string) => void = () => {}) {
    installExitHook();
  }

  get size(): number {
    return this.steps.length;
  }

  /** Labels of pending steps, oldest first. */
  labels(): string[] {
    return this.steps.map((s) => s.label);
  }

  /** Register an undo step; the returned function forgets it (when it was undone some other way). */
  defer(step: UndoStep): () => void {
    this.steps.push(step);
    liveRegistries.add(this);
    return () => {
      const i = this.steps.indexOf(step);
      if (i >= 0) this.steps.splice(i, 1);
      if (this.steps.length === 0) liveRegistries.delete(this);
    };
  }

  /** A position to roll back to: see `rollback`. */
  mark(): number {
    return this.steps.length;
  }

  /** Undo only the steps registered after `mark` (a failed build undoes its own work, not its caller's). */
  async rollback(mark: number): Promise<void> {
    const later = this.steps.splice(mark);
    const sub = new Cleanup(this.log);
    for (const step of later) sub.defer(step);
    if (this.steps.length === 0) liveRegistries.delete(this);
    await sub.run();
  }

  /**
   * Run `build`; when it throws, undo what was registered while it ran (not the caller's earlier steps)
   * and rethrow. A lab that fails half-way through building leaves nothing of itself behind.
   */
  async undoOnFailure<T>(build: () => Promise<T>): Promise<T> {
    const mark = this.mark();
    try {
      return await build();
    } catch (err) {
      await this.rollback(mark);
      throw err;
    }
  }

  /** Undo everything, newest first. Failures are logged and do not stop the remaining steps. */
  run(): Promise<void> {
    if (this.running) return this.running;
    this.running = (async () => {
      const errors: string[] = [];
      for (let step = this.steps.pop(); step; step = this.steps.pop()) {
        try {
          if (step.async) await step.async();
          else step.sync();
        } catch (err) {
          errors.push(`${step.label}: ${(err as Error).message}`);
        }
      }
      liveRegistries.delete(this);
      for (const e of errors) this.log(`cleanup: ${e}`);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** Synchronous undo for exit handlers. */
  runSync(): void {
    for (let step = this.steps.pop(); step; step = this.steps.pop()) {
      try {
        step.sync();
      } catch (err) {
        this.log(`cleanup: ${step.label}: ${(err as Error).message}`);
      }
    }
    liveRegistries.delete(this);
  }

  /**
   * Handle SIGINT/SIGTERM: a first signal resolves a pending `wait()` or else cleans up and exits
   * with 128+signal; a second signal cleans up synchronously and exits at once.
   */
  trapSignals(): SignalTrap {
    let waiter: ((sig: NodeJS.Signals) => void) | null = null;
    let seen = 0;
    const onSignal = (sig: NodeJS.Signals): void => {
      seen++;
      const code = 128 + signalNumber(sig);
      if (seen > 1) {
        this.runSync();
        process.exit(code);
      }
      if (waiter) {
        const w = waiter;
        waiter = null;
        w(sig);
        return;
      }
      this.log(`${sig}: cleaning up`);
      void this.run().finally(() => process.exit(code));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    return {
      wait: () =>
        new Promise<NodeJS.Signals>((resolve) => {
          waiter = resolve;
        }),
      release: () => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      },
    };
  }
}

/** A signal's number, for the shell's exit code convention (128 + number). */
export function signalNumber(sig: NodeJS.Signals): number {
  return (osConstants.signals as Record<string, number>)[sig] ?? 0;
}
