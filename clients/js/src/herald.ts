import { AckBatcher } from './acks.js';
import { backoffDelay } from './backoff.js';
import type { SseEvent } from './sse.js';
import { TokenKeeper } from './token.js';
import {
  openEventSourceStream,
  openFetchStream,
  refusal,
  type Ending,
  type Stream,
  type StreamCallbacks,
} from './transport.js';
import {
  HeraldError,
  type HeraldOptions,
  type Message,
  type Reset,
  type RetryOptions,
  type State,
  type StateChange,
} from './types.js';

type Handler = (m: Message) => void;
type Held = { kind: 'message'; m: Message } | { kind: 'reset'; r: ResetEvent };

interface Position {
  epoch: number;
  seq: number;
}

interface ResetEvent {
  channel: string;
  epoch: number;
  seq: number;
  reason: string;
}

/** Most channels one stream may follow (the server's limit). */
export const MAX_CHANNELS = 64;
const CHANNEL = /^[A-Za-z0-9_\-.:@=+]{1,128}$/;

/**
 * A Herald stream that stays up: it follows a changing set of channels over one connection,
 * resumes with its cursor after every failure (with jittered exponential backoff), refreshes
 * its token, backfills after a reset, deduplicates and batches acks. See docs/CLIENTS.md.
 */
export class Herald {
  private readonly base: string;
  private readonly retry: RetryOptions;
  private readonly random: () => number;
  private readonly fetchImpl: typeof fetch;
  private readonly channels = new Set<string>();
  private readonly handlers = new Map<string, Map<string, Set<Handler>>>();
  private readonly resetHandlers = new Set<(r: Reset) => void>();
  private readonly stateHandlers = new Set<(s: StateChange) => void>();
  private readonly errorHandlers = new Set<(e: HeraldError) => void>();
  private readonly positions = new Map<string, Position>();
  /** Channels being backfilled after a reset, with what arrived meanwhile. */
  private readonly holding = new Map<string, Held[]>();
  private readonly tokens: TokenKeeper;
  private readonly acks: AckBatcher;
  private cursorValue?: string;
  private stream?: Stream;
  private timer?: ReturnType<typeof setTimeout>;
  private attempt = 0;
  /** Bumped whenever a stream is replaced: callbacks of older ones are ignored. */
  private generation = 0;
  private current: State = 'idle';
  private changePending = false;
  private started = false;
  private detachNetwork?: () => void;
  /** Connection attempts made (for tests and diagnostics). */
  attempts = 0;

  constructor(private readonly opts: HeraldOptions) {
    this.base = opts.url.replace(/\/+$/, '');
    this.retry = { baseMs: 500, maxMs: 30_000, ...opts.retry };
    this.random = opts.random ?? Math.random;
    const f = opts.fetch ?? globalThis.fetch;
    if (!f) throw new HeraldError('no fetch in this runtime: pass `fetch`');
    this.fetchImpl = f.bind(globalThis);
    this.tokens = new TokenKeeper(opts.token, opts.refreshBeforeSecs ?? 30, (e) => this.emitError(e));
    this.acks = new AckBatcher(this.base, this.fetchImpl, this.tokens, opts.ackIntervalMs ?? 1000);
    this.cursorValue = opts.cursor;
    for (const c of opts.channels ?? []) this.addChannel(c);
  }

  /** The position of every channel of the stream: save it to resume later (`cursor` option). */
  get cursor(): string | undefined {
    return this.cursorValue;
  }

  get state(): State {
    return this.current;
  }

  /** Times the token callback was asked. */
  get tokenRequests(): number {
    return this.tokens.asked;
  }

  /** Acks the server took. */
  get acksSent(): number {
    return this.acks.sent;
  }

  /** Opens the stream (and keeps it open until `close()` or a refusal that retrying cannot
   * fix); after `stopped`, tries again (the app changed its channels or token). */
  connect(): void {
    if (this.current === 'closed') throw new HeraldError('this client was closed');
    if (this.started && this.current !== 'stopped') return;
    this.started = true;
    this.attempt = 0;
    this.attachNetwork();
    void this.open();
  }

  /** Ends the stream for good; pending acks are sent first. */
  async close(): Promise<void> {
    if (this.current === 'closed') return;
    this.drop();
    this.detachNetwork?.();
    this.tokens.stop();
    this.setState({ state: 'closed' });
    await this.acks.close();
  }

  /** Follows one more channel: one reconnect (shared with other changes made at once). */
  subscribe(channel: string): void {
    if (this.addChannel(channel)) this.channelsChanged();
  }

  /** Stops following a channel; its position is forgotten. */
  unsubscribe(channel: string): void {
    if (!this.channels.delete(channel)) return;
    this.positions.delete(channel);
    this.holding.delete(channel);
    this.channelsChanged();
  }

  /** Calls `handler` with each event `event` (`*`: any) of `channel`; returns how to stop. */
  on<T = unknown>(channel: string, event: string, handler: (m: Message<T>) => void): () => void {
    let byEvent = this.handlers.get(channel);
    if (!byEvent) this.handlers.set(channel, (byEvent = new Map()));
    let set = byEvent.get(event);
    if (!set) byEvent.set(event, (set = new Set()));
    set.add(handler as Handler);
    if (event !== '*') this.stream?.listen(event);
    return () => set.delete(handler as Handler);
  }

  onReset(handler: (r: Reset) => void): () => void {
    this.resetHandlers.add(handler);
    return () => this.resetHandlers.delete(handler);
  }

  onState(handler: (s: StateChange) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  onError(handler: (e: HeraldError) => void): () => void {
    this.errorHandlers.add(handler);
    return () => this.errorHandlers.delete(handler);
  }

  /** Records that `m` was processed; sent (the highest per channel) at the next ack interval. */
  ack(m: Pick<Message, 'channel' | 'epoch' | 'seq'>): void {
    if (m.epoch === undefined || m.seq === undefined) return; // ephemeral: nothing to ack
    this.acks.add(m.channel, m.epoch, m.seq);
  }

  /** Sends pending acks now. */
  flushAcks(): Promise<void> {
    return this.acks.flush();
  }

  // --- connection -----------------------------------------------------------------------

  private addChannel(channel: string): boolean {
    if (!CHANNEL.test(channel) || channel.startsWith(':') || channel.endsWith(':')) {
      throw new HeraldError(`invalid channel name: ${JSON.stringify(channel)}`);
    }
    if (this.channels.has(channel)) return false;
    if (this.channels.size >= MAX_CHANNELS) {
      throw new HeraldError(`a stream follows at most ${MAX_CHANNELS} channels`);
    }
    this.channels.add(channel);
    return true;
  }

  private channelsChanged(): void {
    if (this.changePending) return;
    this.changePending = true;
    queueMicrotask(() => {
      this.changePending = false;
      if (!this.started) return;
      // Waiting out a backoff, offline or stopped: the next attempt takes the new list anyway.
      if (this.current === 'connecting' || this.current === 'open' || this.current === 'idle') {
        void this.open();
      }
    });
  }

  private async open(): Promise<void> {
    this.drop();
    const gen = ++this.generation;
    if (this.channels.size === 0) {
      this.setState({ state: 'idle' });
      return;
    }
    this.setState({ state: 'connecting' });
    this.attempts++;
    let token: string | undefined;
    try {
      token = await this.tokens.current();
    } catch (e) {
      const error = e instanceof HeraldError ? e : new HeraldError(`token callback failed: ${e}`);
      if (gen === this.generation) this.failed({ kind: 'network', error });
      return;
    }
    if (gen !== this.generation) return;
    const url = new URL(`${this.base}/v1/sse`);
    for (const c of this.channels) url.searchParams.append('channel', c);
    const cb: StreamCallbacks = {
      onOpen: () => {
        if (gen !== this.generation) return;
        this.attempt = 0;
        this.setState({ state: 'open' });
      },
      onEvent: (e) => gen === this.generation && this.received(e),
      onCursor: (id) => {
        if (gen === this.generation) this.cursorValue = id;
      },
      onEnd: (e) => {
        if (gen !== this.generation) return;
        this.stream = undefined;
        this.failed(e);
      },
    };
    const req = {
      url: url.toString(),
      token,
      cursor: this.cursorValue,
      idleTimeoutMs: this.opts.idleTimeoutMs ?? 45_000,
      fetch: this.fetchImpl,
    };
    const ES = this.opts.EventSource ?? (globalThis as { EventSource?: typeof EventSource }).EventSource;
    const useES = this.opts.transport === 'eventsource' || (this.opts.transport !== 'fetch' && ES !== undefined);
    if (useES) {
      if (!ES) throw new HeraldError('no EventSource in this runtime');
      const names = new Set(this.opts.events ?? []);
      for (const byEvent of this.handlers.values()) for (const n of byEvent.keys()) if (n !== '*') names.add(n);
      this.stream = openEventSourceStream(req, cb, ES, names);
    } else {
      this.stream = openFetchStream(req, cb);
    }
  }

  /** Closes the stream and any pending retry, without a state change. */
  private drop(): void {
    this.generation++;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.stream?.close();
    this.stream = undefined;
  }

  private failed(e: Ending | { kind: 'reconnect'; afterMs: number }): void {
    let delay: number;
    let error: HeraldError | undefined;
    switch (e.kind) {
      case 'reconnect':
        delay = e.afterMs;
        break;
      case 'http': {
        error = e.error;
        const status = e.error.status ?? 0;
        if (status === 401) {
          if (!this.tokens.canRefresh) return this.stop(error);
          this.tokens.invalidate();
          delay = this.backoff();
        } else if (status === 403 || status === 400 || status === 404) {
          return this.stop(error);
        } else {
          // 429 and 503 say when to come back; every refused client hears the same whole
          // seconds, so up to 20 % more at random keeps them from coming back together.
          const backoff = this.backoff();
          const ra = e.retryAfterMs;
          delay = ra ? Math.max(backoff, Math.round(ra * (1 + this.random() * 0.2))) : backoff;
        }
        break;
      }
      case 'network':
        error = e.error;
        delay = this.backoff();
        break;
      case 'idle':
        error = new HeraldError('the stream went silent');
        delay = this.backoff();
        break;
      case 'ended':
        delay = this.backoff();
        break;
    }
    if (error) this.emitError(error);
    this.drop();
    this.setState({ state: 'retrying', delayMs: delay, error });
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.open();
    }, delay);
  }

  private backoff(): number {
    return backoffDelay(this.attempt++, this.retry, this.random);
  }

  private stop(error: HeraldError): void {
    this.drop();
    this.emitError(error);
    this.setState({ state: 'stopped', error });
  }

  private attachNetwork(): void {
    const w = globalThis as { addEventListener?: typeof addEventListener; removeEventListener?: typeof removeEventListener };
    if (this.detachNetwork || typeof w.addEventListener !== 'function' || typeof window === 'undefined') return;
    const offline = () => {
      if (this.current === 'closed' || this.current === 'stopped') return;
      this.drop();
      this.setState({ state: 'offline' });
    };
    const online = () => {
      if (this.current !== 'offline') return;
      this.attempt = 0;
      void this.open();
    };
    w.addEventListener('offline', offline);
    w.addEventListener('online', online);
    this.detachNetwork = () => {
      w.removeEventListener?.('offline', offline);
      w.removeEventListener?.('online', online);
    };
  }

  // --- events ---------------------------------------------------------------------------

  private received(e: SseEvent): void {
    if (e.event === 'herald:reconnect') {
      let afterMs = 0;
      try {
        afterMs = Number(JSON.parse(e.data)?.after_ms) || 0;
      } catch {}
      this.failed({ kind: 'reconnect', afterMs });
      return;
    }
    let env: Record<string, unknown>;
    try {
      env = JSON.parse(e.data);
    } catch {
      this.emitError(new HeraldError(`an event that is not JSON: ${e.data.slice(0, 80)}`));
      return;
    }
    if (e.id) this.cursorValue = e.id;
    const channel = String(env.channel ?? '');
    if (e.event === 'herald:reset') {
      const r: ResetEvent = {
        channel,
        epoch: Number(env.epoch),
        seq: Number(env.seq),
        reason: String(env.reason ?? ''),
      };
      this.holdOr(channel, { kind: 'reset', r });
      return;
    }
    const m: Message = {
      channel,
      event: e.event,
      data: env.data,
      id: typeof env.seq === 'number' ? e.id : undefined,
      epoch: typeof env.epoch === 'number' ? env.epoch : undefined,
      seq: typeof env.seq === 'number' ? env.seq : undefined,
      ts: typeof env.ts === 'number' ? env.ts : undefined,
      ephemeral: typeof env.seq !== 'number',
      backfilled: false,
    };
    this.holdOr(channel, { kind: 'message', m });
  }

  /** While a channel backfills, its live events wait their turn. */
  private holdOr(channel: string, h: Held): void {
    const held = this.holding.get(channel);
    if (held) {
      held.push(h);
      return;
    }
    if (h.kind === 'message') this.deliver(h.m);
    else void this.reset(h.r);
  }

  private deliver(m: Message): void {
    if (this.current === 'closed') return;
    if (m.seq !== undefined && m.epoch !== undefined) {
      const had = this.positions.get(m.channel);
      if (had && had.epoch === m.epoch && m.seq <= had.seq) return; // seen already
      this.positions.set(m.channel, { epoch: m.epoch, seq: m.seq });
    }
    if (!this.channels.has(m.channel)) return;
    const byEvent = this.handlers.get(m.channel);
    if (!byEvent) return;
    for (const key of [m.event, '*']) {
      for (const h of byEvent.get(key) ?? []) {
        try {
          h(m);
        } catch (err) {
          this.emitError(new HeraldError(`a handler of ${m.channel} threw: ${err}`));
        }
      }
    }
  }

  /** `herald:reset`: deliver what the history still has up to the new position, then tell. */
  private async reset(r: ResetEvent): Promise<void> {
    const last = this.positions.get(r.channel);
    const out: Reset = { ...r, backfilled: 0 };
    const backfill = (this.opts.backfillOnReset ?? true) && r.reason !== 'ahead';
    if (backfill) {
      this.holding.set(r.channel, []);
      const after = last && last.epoch === r.epoch ? last.seq : 0;
      try {
        const first = await this.backfill(r, after, out);
        if (last !== undefined || r.reason === 'epoch') {
          out.missed = Math.max(0, Math.min(first, r.seq + 1) - after - 1);
        }
      } catch (e) {
        out.error = e instanceof HeraldError ? e : new HeraldError(`history: ${e}`);
        this.emitError(out.error);
      }
    } else if (last && last.epoch === r.epoch && r.reason !== 'ahead') {
      out.missed = Math.max(0, r.seq - last.seq);
    }
    const now = this.positions.get(r.channel);
    if (!now || now.epoch !== r.epoch || now.seq < r.seq) {
      this.positions.set(r.channel, { epoch: r.epoch, seq: r.seq });
    }
    const held = this.holding.get(r.channel) ?? [];
    this.holding.delete(r.channel);
    if (this.channels.has(r.channel)) {
      for (const h of this.resetHandlers) {
        try {
          h(out);
        } catch (err) {
          this.emitError(new HeraldError(`a reset handler threw: ${err}`));
        }
      }
    }
    for (const h of held) this.holdOr(r.channel, h);
  }

  /** Pages the history after `after` up to the reset's position; the first retained seq. */
  private async backfill(r: ResetEvent, after: number, out: Reset): Promise<number> {
    let first = Number.MAX_SAFE_INTEGER;
    let cursor = after;
    for (let page = 0; page < 1000 && cursor < r.seq; page++) {
      const token = await this.tokens.current();
      const headers: Record<string, string> = {};
      if (token) headers.authorization = `Bearer ${token}`;
      const url = `${this.base}/v1/channels/${encodeURIComponent(r.channel)}/history?after=${cursor}&limit=1000`;
      const resp = await this.fetchImpl(url, { headers, signal: AbortSignal.timeout(10_000) });
      if (!resp.ok) {
        if (resp.status === 401) this.tokens.invalidate();
        throw (await refusal(resp)).error;
      }
      const body = (await resp.json()) as {
        epoch: number;
        first_seq?: number;
        messages: { seq: number; event?: string; data: unknown; ts?: number }[];
        next_after?: number;
        has_more?: boolean;
      };
      if (body.epoch !== r.epoch) break; // recreated meanwhile: the stream carries on from here
      if (page === 0) first = body.first_seq ?? (body.messages[0]?.seq ?? r.seq + 1);
      for (const h of body.messages) {
        if (h.seq > r.seq) return first;
        if (!this.channels.has(r.channel)) return first;
        this.deliver({
          channel: r.channel,
          event: h.event ?? 'message',
          data: h.data,
          epoch: body.epoch,
          seq: h.seq,
          ts: h.ts,
          ephemeral: false,
          backfilled: true,
        });
        out.backfilled++;
      }
      if (!body.has_more || body.next_after === undefined) break;
      cursor = body.next_after;
    }
    return first;
  }

  private setState(s: StateChange): void {
    this.current = s.state;
    for (const h of this.stateHandlers) {
      try {
        h(s);
      } catch {}
    }
  }

  private emitError(e: HeraldError): void {
    for (const h of this.errorHandlers) {
      try {
        h(e);
      } catch {}
    }
  }
}
