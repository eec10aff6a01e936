// The viewer's page: one Herald stream for the show's comments and gifts (reliable), its
// reactions (ephemeral, conflated), the viewer count (herald:occupancy) and the viewer's
// own inbox of gifts (reliable, acked so another device does not show them again).
import { Herald } from '/sdk/index.js';

const params = new URLSearchParams(location.search);
const config = await (await fetch(`/config.json?${params}`)).json();
const $ = (id) => document.getElementById(id);
const MAX_COMMENTS = 40;

const herald = new Herald({
  url: config.herald,
  token: async () => (await fetch(`/token?user=${encodeURIComponent(config.user)}`)).text(),
  channels: ['show:main', 'react:main', `user:${config.user}`],
});

herald.on('show:main', 'comment', (m) => {
  const li = document.createElement('li');
  li.innerHTML = '<b></b> <span></span>';
  li.querySelector('b').textContent = m.data.user;
  li.querySelector('span').textContent = m.data.text;
  $('comments').prepend(li);
  while ($('comments').children.length > MAX_COMMENTS) $('comments').lastChild.remove();
});

let toastTimer;
herald.on('show:main', 'gift', (m) => {
  $('toast').textContent = `${m.data.from} sent a ${m.data.gift} (${m.data.coins})`;
  $('toast').hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => ($('toast').hidden = true), 2500);
});

herald.on('react:main', 'hearts', (m) => {
  $('hearts').querySelector('b').textContent = m.data.total.toLocaleString();
});

herald.on('show:main', 'herald:occupancy', (m) => {
  $('viewers').querySelector('b').textContent = m.data.count.toLocaleString();
});

let acked = 0;
herald.on(`user:${config.user}`, 'gift', (m) => {
  const li = document.createElement('li');
  li.textContent = `${m.data.gift} from ${m.data.from}${m.backfilled ? ' (while you were away)' : ''}`;
  $('inbox').prepend(li);
  herald.ack(m);
  $('acked').textContent = `${++acked} acked`;
});

herald.onState(({ state }) => {
  $('conn').textContent = state;
  $('conn').dataset.state = state;
});

herald.connect();
window.herald = herald;
