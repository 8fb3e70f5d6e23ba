/** Polling until a deadline, and waiting for one event: the tests' only ways to wait. */

export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  { what, timeoutMs = 10_000, intervalMs = 25 }: { what: string; timeoutMs?: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** The arguments of the first `event` from `emitter` for which `accept` is true. */
/** Anything with `on` and `off`, such as a Verifier. */
export interface Emitter {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  on(event: any, listener: (...args: any[]) => void): unknown;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  off(event: any, listener: (...args: any[]) => void): unknown;
}

export function nextEvent<A extends unknown[]>(
  emitter: Emitter,
  event: string,
  { accept = () => true, timeoutMs = 10_000 }: { accept?: (...args: A) => boolean; timeoutMs?: number } = {},
): Promise<A> {
  return new Promise((resolve, reject) => {
    const listener = (...args: unknown[]) => {
      if (accept(...(args as A))) {
        clearTimeout(timer);
        emitter.off(event, listener);
        resolve(args as A);
      }
    };
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${event}`));
    }, timeoutMs);
    emitter.on(event, listener);
  });
}
