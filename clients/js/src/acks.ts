import type { TokenKeeper } from './token.js';

interface Position {
  epoch: number;
  seq: number;
}

/** Acks batched per channel: the highest position of each, sent every interval and on close. */
export class AckBatcher {
  private pending = new Map<string, Position>();
  private timer?: ReturnType<typeof setInterval>;
  private flushing?: Promise<void>;
  private closed = false;
  /** Acks the server took (for tests). */
  sent = 0;

  constructor(
    private readonly url: string,
    private readonly fetchImpl: typeof fetch,
    private readonly tokens: TokenKeeper,
    private readonly intervalMs: number,
  ) {}

  add(channel: string, epoch: number, seq: number): void {
    const had = this.pending.get(channel);
    if (!had || epoch > had.epoch || (epoch === had.epoch && seq > had.seq)) {
      this.pending.set(channel, { epoch, seq });
    }
    if (!this.timer && !this.closed) {
      this.timer = setInterval(() => void this.flush(), this.intervalMs);
    }
  }

  /** Sends what is pending once more, and no more after. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  /** Sends what is pending; one flush at a time. */
  flush(): Promise<void> {
    if (!this.flushing) {
      this.flushing = this.send().finally(() => {
        this.flushing = undefined;
        // Nothing left to send: no timer until the next ack.
        if (this.pending.size === 0) {
          clearInterval(this.timer);
          this.timer = undefined;
        }
      });
    }
    return this.flushing;
  }

  private async send(): Promise<void> {
    const batch = [...this.pending];
    this.pending.clear();
    for (const [channel, pos] of batch) {
      let retry = true;
      try {
        const token = await this.tokens.current();
        const headers: Record<string, string> = { 'content-type': 'application/json' };
        if (token) headers.authorization = `Bearer ${token}`;
        const resp = await this.fetchImpl(`${this.url}/v1/ack`, {
          method: 'POST',
          headers,
          body: JSON.stringify({ channel, epoch: pos.epoch, seq: pos.seq }),
          signal: AbortSignal.timeout(10_000),
        });
        await resp.text().catch(() => '');
        if (resp.ok) {
          this.sent++;
          retry = false;
        } else if (resp.status === 401) {
          this.tokens.invalidate();
        } else if (resp.status === 400 || resp.status === 403) {
          retry = false; // a position or channel the server will never take
        }
      } catch {
        // network: kept for the next interval
      }
      if (retry) this.add(channel, pos.epoch, pos.seq);
    }
  }
}
