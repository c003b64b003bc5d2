// The demo SPA: it talks only to courier, on its own origin, with the session cookie and the
// X-CSRF header. It never sees a token.

const $ = (id) => document.getElementById(id);

async function api(method, path) {
  const response = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: { 'X-CSRF': '1' },
  });
  const type = response.headers.get('content-type') ?? '';
  const body = type.includes('json') ? await response.json() : await response.text();
  return { status: response.status, body };
}

function show(id, visible) {
  $(id).hidden = !visible;
}

function notice(text) {
  $('notice').textContent = text;
  show('notice', Boolean(text));
}

function here() {
  return location.pathname;
}

async function callService(name) {
  $('answer').textContent = `Calling ${name}…`;
  const { status, body } = await api('GET', `/api/services/${encodeURIComponent(name)}/hello?from=spa`);
  $('answer').textContent = `${status}\n${typeof body === 'string' ? body : JSON.stringify(body, null, 2)}`;
  if (status === 403 && body.code === 'connect_required') {
    notice(`${name} needs your account there: use Connect.`);
  }
}

async function disconnect(name) {
  const { status } = await api('DELETE', `/api/connections/${encodeURIComponent(name)}`);
  notice(status === 204 ? `${name} disconnected.` : `Disconnecting ${name} failed (${status}).`);
  await loadServices();
}

async function loadServices() {
  const { status, body } = await api('GET', '/api/services');
  if (status !== 200) return;
  const rows = body.services.map((service) => {
    const row = document.createElement('tr');
    row.dataset.service = service.name;
    const cells = [service.name, service.provider ?? '—', service.status].map((text) => {
      const cell = document.createElement('td');
      cell.textContent = text;
      return cell;
    });
    cells[2].className = `status status-${service.status}`;
    const actions = document.createElement('td');
    const call = document.createElement('button');
    call.textContent = 'Call';
    call.className = 'call';
    call.onclick = () => callService(service.name);
    actions.append(call, ' ');
    if (service.linked && service.connected) {
      const button = document.createElement('button');
      button.textContent = 'Disconnect';
      button.className = 'secondary disconnect';
      button.onclick = () => disconnect(service.name);
      actions.append(button);
    } else if (service.connect_url) {
      const button = document.createElement('button');
      button.textContent = 'Connect';
      button.className = 'connect';
      button.onclick = () => {
        location.href = `${service.connect_url}?return_to=${encodeURIComponent(here())}`;
      };
      actions.append(button);
    }
    row.append(...cells, actions);
    return row;
  });
  $('services').replaceChildren(...rows);
}

async function signOut() {
  const { body } = await api('POST', '/auth/logout');
  location.href = body.logout_url ?? '/';
}

async function start() {
  const params = new URLSearchParams(location.search);
  const error = params.get('login_error') ?? params.get('connect_error');
  if (error) notice(`That did not work: ${error}`);

  $('sign-in').onclick = () => {
    location.href = `/auth/login?return_to=${encodeURIComponent(here())}`;
  };
  $('sign-out').onclick = signOut;

  const { status, body } = await api('GET', '/api/me');
  const signedIn = status === 200;
  show('sign-in', !signedIn);
  show('sign-out', signedIn);
  show('user', signedIn);
  show('signed-out', !signedIn);
  show('me-section', signedIn);
  show('services-section', signedIn);
  if (!signedIn) return;
  $('user').textContent = body.name ?? body.email ?? body.sub;
  $('me').textContent = JSON.stringify(body, null, 2);
  await loadServices();
}

start();
