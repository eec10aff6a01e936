/** What a handler receives: one event of the stream, its envelope parsed. */
export interface Message<T = unknown> {
  channel: string;
  /** The publisher's event name (`message` when it gave none). */
  event: string;
  /** The publisher's JSON, parsed. */
  data: T;
  /** The stream's cursor after this event (reliable events only). */
  id?: string;
  /** Position of a reliable message; absent on ephemeral ones. */
  epoch?: number;
  seq?: number;
  /** Server time of the publish, ms since 1970. */
  ts?: number;
  ephemeral: boolean;
  /** Fetched from the history after a `herald:reset`, not received live. */
  backfilled: boolean;
}

/** A channel's position was gone (`herald:reset`); what the client did about it. */
export interface Reset {
  channel: string;
  /** `retention` (older than the channel keeps), `epoch` (the channel was recreated), `ahead`. */
  reason: string;
  /** The position the stream goes on from. */
  epoch: number;
  seq: number;
  /** Messages fetched from the history and delivered (marked `backfilled`) before this. */
  backfilled: number;
  /** Positions no longer retained; undefined when this session had no position to compare. */
  missed?: number;
  /** Why the history could not be read, when it could not. */
  error?: HeraldError;
}

export type State = 'idle' | 'connecting' | 'open' | 'retrying' | 'offline' | 'stopped' | 'closed';

export interface StateChange {
  state: State;
  /** `retrying`: how long until the next attempt. */
  delayMs?: number;
  /** `retrying` and `stopped`: what happened. */
  error?: HeraldError;
}

/** A failure, with the server's `error.code` when it answered one. */
export class HeraldError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'HeraldError';
  }
}

export type TokenSource = string | (() => string | Promise<string>);

export interface RetryOptions {
  baseMs: number;
  maxMs: number;
}

export interface HeraldOptions {
  /** The server's base URL, e.g. `https://rt.example.com`. */
  url: string;
  /** A subscriber token, or a callback asked at start, before `exp` and after a 401. */
  token?: TokenSource;
  channels?: string[];
  /** A cursor saved from `herald.cursor`: resume every channel from there. */
  cursor?: string;
  backfillOnReset?: boolean;
  ackIntervalMs?: number;
  retry?: Partial<RetryOptions>;
  refreshBeforeSecs?: number;
  /** A stream silent this long (no event, no heartbeat) is taken for dead. */
  idleTimeoutMs?: number;
  transport?: 'auto' | 'eventsource' | 'fetch';
  /** EventSource only delivers named events it listens for: names to listen for beyond those handlers name. */
  events?: string[];
  /** Overrides for tests and other runtimes. */
  fetch?: typeof fetch;
  EventSource?: typeof EventSource;
  random?: () => number;
}
