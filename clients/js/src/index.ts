/**
 * herald-client: follow Herald channels from browsers (EventSource) and Node 20+ (fetch),
 * with resume, channel changes, token refresh, reset backfill, dedupe, acks and backoff.
 */
export { Herald, MAX_CHANNELS } from './herald.js';
export { backoffDelay, retryAfterMs } from './backoff.js';
export { SseParser, type SseEvent } from './sse.js';
export { expOf } from './token.js';
export {
  HeraldError,
  type HeraldOptions,
  type Message,
  type Reset,
  type RetryOptions,
  type State,
  type StateChange,
  type TokenSource,
} from './types.js';
