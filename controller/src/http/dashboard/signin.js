// Signs in with a user's token: the hub answers with a session cookie
// (HttpOnly: this script never sees it), then the page loads.
document.getElementById('signin').addEventListener('submit', async ev => {
  ev.preventDefault();
  const result = document.getElementById('signin-result');
  const button = document.getElementById('signin-button');
  button.disabled = true;
  result.className = 'result';
  result.textContent = 'signing in…';
  try {
    const r = await fetch('/api/session', {
      method: 'POST',
      headers: { 'X-Harvester': '1', 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: document.getElementById('token').value }),
    });
    // Read to the end before leaving, so the request is not cut short.
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      location.replace('/');
      return;
    }
    result.className = 'result bad';
    result.textContent = body.message || `refused (${r.status})`;
  } catch (e) {
    result.className = 'result bad';
    result.textContent = 'the hub did not answer';
  } finally {
    button.disabled = false;
  }
});
