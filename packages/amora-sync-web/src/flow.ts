/** Flow-control building blocks: reconnect backoff with full jitter and a latest-per-key queue. */

/** How the client retries a lost or refused connection (times in ms). */
export interface ReconnectPolicy {
  /** Upper bound of the first wait. */
  initialDelayMs: number;
  /** Cap on the upper bound. */
  maxDelayMs: number;
  /** Growth of the upper bound per failed attempt. */
  multiplier: number;
  /** Bound on one attempt (websocket + TLS + CONNACK). */
  connectTimeoutMs: number;
}

export const DEFAULT_RECONNECT: ReconnectPolicy = { initialDelayMs: 100, maxDelayMs: 30_000, multiplier: 2, connectTimeoutMs: 10_000 };

/**
 * Exponential backoff with full jitter: attempt n waits uniformly in
 * [0, min(max, initial * multiplier^n)], so clients that lost the same broker come back spread out.
 */
export class Backoff {
  attempt = 0;
  constructor(readonly policy: ReconnectPolicy, private readonly random: () => number = Math.random) {}
  ceiling(): number {
    return Math.min(this.policy.maxDelayMs, this.policy.initialDelayMs * this.policy.multiplier ** Math.min(this.attempt, 64));
  }
  nextDelay(): number {
    const delay = this.random() * this.ceiling();
    this.attempt += 1;
    return delay;
  }
  reset(): void {
    this.attempt = 0;
  }
}

/**
 * A bounded async queue keeping only the latest item per key. An item for a key already
 * waiting replaces it in place (keeping its place in line, counted in `superseded`); a new key
 * beyond `maxKeys` drops the oldest waiting key (counted in `dropped`). One consumer.
 */
export class LatestPerKeyQueue<K, V> {
  private readonly items = new Map<K, V>();
  private wake: (() => void) | undefined;
  private closed = false;
  superseded = 0;
  dropped = 0;

  constructor(private readonly maxKeys: number) {
    if (maxKeys < 1) throw new RangeError("maxKeys must be >= 1");
  }

  get size(): number {
    return this.items.size;
  }

  put(key: K, item: V): void {
    if (this.closed) return;
    if (this.items.has(key)) this.superseded += 1;
    else if (this.items.size >= this.maxKeys) {
      const oldest = this.items.keys().next().value as K;
      this.items.delete(oldest);
      this.dropped += 1;
    }
    this.items.set(key, item);
    this.wake?.();
  }

  close(): void {
    this.closed = true;
    this.wake?.();
  }

  /** The oldest waiting item, or `undefined` once closed and drained. */
  async get(): Promise<V | undefined> {
    for (;;) {
      const first = this.items.entries().next();
      if (!first.done) {
        this.items.delete(first.value[0]);
        return first.value[1];
      }
      if (this.closed) return undefined;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

/** Resolve after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
