/** The wait before retry number `attempt` (0-based): exponential, capped, with equal jitter,
 * so a crowd of clients that failed together does not come back together. */
export function backoffDelay(
  attempt: number,
  retry: { baseMs: number; maxMs: number },
  random: () => number = Math.random,
): number {
  const exp = Math.min(retry.maxMs, retry.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(exp * (0.5 + random() * 0.5));
}

/** `Retry-After` in ms (seconds or an HTTP date); undefined when absent or unreadable. */
export function retryAfterMs(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const secs = Number(value.trim());
  if (Number.isFinite(secs) && secs >= 0) return secs * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
