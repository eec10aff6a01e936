import { backoffDelay } from './backoff.js';
import { HeraldError, type TokenSource } from './types.js';

/** The `exp` claim of a JWT (seconds), read without verifying: only to know when to refresh. */
export function expOf(token: string): number | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(decodeBase64(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === 'number' ? json.exp : undefined;
  } catch {
    return undefined;
  }
}

function decodeBase64(b64: string): string {
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * The subscriber token: a fixed one, or one a callback gives, asked again before it expires
 * (the stream is not touched: the server checks tokens when a stream opens) and after a 401.
 */
export class TokenKeeper {
  private token?: string;
  private pending?: Promise<string>;
  private timer?: ReturnType<typeof setTimeout>;
  private failures = 0;
  private stopped = false;
  /** Times the callback was asked (for tests and metrics). */
  asked = 0;

  constructor(
    private readonly source: TokenSource | undefined,
    private readonly refreshBeforeSecs: number,
    private readonly onError: (e: HeraldError) => void,
  ) {
    if (typeof source === 'string') this.token = source;
  }

  get canRefresh(): boolean {
    return typeof this.source === 'function';
  }

  /** The token to use now (asks the callback when there is none yet). */
  async current(): Promise<string | undefined> {
    if (this.token !== undefined || !this.canRefresh) return this.token;
    return this.ask();
  }

  /** The server refused the token: the next `current()` asks for a new one. */
  invalidate(): void {
    if (this.canRefresh) this.token = undefined;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private ask(): Promise<string> {
    if (!this.pending) {
      const fn = this.source as () => string | Promise<string>;
      this.asked++;
      this.pending = Promise.resolve()
        .then(fn)
        .then((t) => {
          if (typeof t !== 'string' || t === '') throw new HeraldError('the token callback gave no token');
          this.token = t;
          this.failures = 0;
          this.schedule(t);
          return t;
        })
        .finally(() => {
          this.pending = undefined;
        });
    }
    return this.pending;
  }

  /** Asks again `refreshBeforeSecs` before `exp`, or at 80 % of the time left if sooner
   * (also for a token that lives less than `refreshBeforeSecs`: asking at once would ask in a
   * loop); at least 1 s after. */
  private schedule(token: string): void {
    clearTimeout(this.timer);
    const exp = expOf(token);
    if (exp === undefined || this.stopped) return;
    const left = exp * 1000 - Date.now();
    const early = left - this.refreshBeforeSecs * 1000;
    const at = Math.max(1000, early > 0 ? Math.min(early, left * 0.8) : left * 0.8);
    this.timer = setTimeout(() => void this.refresh(), at);
  }

  private async refresh(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.ask();
    } catch (e) {
      this.failures++;
      this.onError(e instanceof HeraldError ? e : new HeraldError(`token callback failed: ${e}`));
      const wait = backoffDelay(this.failures, { baseMs: 1000, maxMs: 30_000 });
      if (!this.stopped) this.timer = setTimeout(() => void this.refresh(), wait);
    }
  }
}
