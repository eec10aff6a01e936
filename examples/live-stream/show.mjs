// Publishes a demo show to Herald: comments and gifts (reliable), a gift to each named
// viewer's inbox (reliable, acked by the viewer's page), and heart reactions (ephemeral,
// conflated: only the latest count matters). Runs until stopped (or for SHOW_SECS).
//
// Environment: HERALD_URL (default http://127.0.0.1:7070), HERALD_API_KEY (none under
// --dev), SHOW_PACE (1 = real time; 4 = four times faster), SHOW_VIEWERS (comma-separated
// users who get inbox gifts), SHOW_SECS.

const HERALD_URL = process.env.HERALD_URL || 'http://127.0.0.1:7070';
const KEY = process.env.HERALD_API_KEY;
const PACE = Number(process.env.SHOW_PACE || 1);
const VIEWERS = (process.env.SHOW_VIEWERS || '').split(',').filter(Boolean);
const UNTIL = process.env.SHOW_SECS ? Date.now() + Number(process.env.SHOW_SECS) * 1000 : Infinity;

const NAMES = ['ana', 'bo', 'chen', 'dev', 'eli', 'fay', 'gus', 'hana', 'ivo', 'jun'];
const LINES = [
  'hello from Lisbon!', 'this track is fire', 'first time here', 'what camera is that?',
  'the drop at 2:10', 'greetings from Osaka', 'play the old one!', 'chat is so fast today',
  'can we get a shoutout?', 'audio is perfect now', 'love the lights', 'encore! encore!',
];
const GIFTS = [['rose', 1], ['star', 5], ['rocket', 50], ['crown', 100]];
const pick = (a) => a[Math.floor(Math.random() * a.length)];

async function publish(body) {
  const headers = { 'content-type': 'application/json' };
  if (KEY) headers.authorization = `Bearer ${KEY}`;
  const resp = await fetch(`${HERALD_URL}/v1/publish`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (!resp.ok) console.error(`publish ${body.channel}: ${resp.status} ${await resp.text()}`);
}

function every(ms, fn) {
  const tick = async () => {
    if (Date.now() > UNTIL) return;
    await fn().catch((e) => console.error(e.message));
    setTimeout(tick, ms / PACE);
  };
  void tick();
}

let hearts = 0;
every(900, () => publish({ channel: 'show:main', event: 'comment', data: { user: pick(NAMES), text: pick(LINES) } }));
every(200, () => {
  hearts += 1 + Math.floor(Math.random() * 4);
  return publish({ channel: 'react:main', event: 'hearts', data: { total: hearts }, ephemeral: true, conflation_key: 'hearts' });
});
every(4000, async () => {
  const [gift, coins] = pick(GIFTS);
  const from = pick(NAMES);
  await publish({ channel: 'show:main', event: 'gift', data: { from, gift, coins } });
  for (const to of VIEWERS) {
    await publish({ channel: `user:${to}`, event: 'gift', data: { from, gift, coins, to } });
  }
});
console.log(`show running against ${HERALD_URL} (pace ×${PACE})`);
