// The bundled page at `/` (&web) in headless Chromium: two users log in
// through the page's form, chat over &broadcast (B sees A's message with
// `from` = A), the chat's history and A's notes survive a reload; a stale
// save shows the 412 conflict. The page's strict CSP must not block anything it uses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, startSigma, TEST_TIMEOUT_MS } from './lib.mjs';

const STEP = { timeout: 15_000 };

/** A new context and page, with CSP violations and page errors collected. */
async function openPage(browser, url, problems) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  await page.goto(`${url}/`);
  return page;
}

async function logIn(page, user, password) {
  await page.getByLabel('User name').fill(user, STEP);
  await page.getByLabel('Password').fill(password, STEP);
  await page.getByRole('button', { name: 'Log in' }).click(STEP);
  await page.locator('#me', { hasText: user }).waitFor(STEP);
  await page.locator('#chat[data-ready="true"]').waitFor(STEP);
}

test('web page: login, chat between two users, notes survive a reload', { timeout: TEST_TIMEOUT_MS }, async () => {
  const sigma = await startSigma({
    users: [
      { name: 'alice', password: 'alice-password-1' },
      { name: 'bob', password: 'bob-password-22' },
    ],
  });
  const browser = await launchBrowser();
  const problems = [];
  try {
    const a = await openPage(browser, sigma.url, problems);
    const b = await openPage(browser, sigma.url, problems);

    // A wrong password shows the error and stays on the form.
    await a.getByLabel('User name').fill('alice');
    await a.getByLabel('Password').fill('not-the-password');
    await a.getByRole('button', { name: 'Log in' }).click();
    await a.locator('#login-error', { hasText: 'Wrong user name or password' }).waitFor(STEP);

    await logIn(a, 'alice', 'alice-password-1');
    await logIn(b, 'bob', 'bob-password-22');

    // Chat: typed by A (Enter submits), shown on B's page with from = alice.
    const text = `hello from alice ${Date.now()}`;
    await a.getByLabel('Message', { exact: true }).fill(text);
    await a.getByLabel('Message', { exact: true }).press('Enter');
    const line = b.locator('#chat-log li', { hasText: text });
    await line.waitFor(STEP);
    assert.equal(await line.locator('.from').textContent(), 'alice');
    await a.locator('#chat-log li', { hasText: text }).waitFor(STEP);

    // Notes: saved, still there after a reload.
    await a.locator('#notes[data-loaded="true"]').waitFor(STEP);
    const note = `shopping list\n- milk ${Date.now()}`;
    await a.getByLabel('Your notes').fill(note);
    await a.getByRole('button', { name: 'Save' }).click();
    await a.locator('#notes-status', { hasText: 'Saved' }).waitFor(STEP);
    await a.reload();
    await a.locator('#notes[data-loaded="true"]').waitFor(STEP);
    assert.equal(await a.getByLabel('Your notes').inputValue(), note);
    // The chat's history is shown after the reload (once), then live
    // messages follow it.
    await a.locator('#chat[data-ready="true"]').waitFor(STEP);
    const kept = a.locator('#chat-log li', { hasText: text });
    assert.equal(await kept.count(), 1);
    assert.equal(await kept.locator('.from').textContent(), 'alice');
    const after = `after the reload ${Date.now()}`;
    await b.getByLabel('Message', { exact: true }).fill(after);
    await b.getByLabel('Message', { exact: true }).press('Enter');
    await a.locator('#chat-log li', { hasText: after }).waitFor(STEP);
    assert.deepEqual(await a.locator('#chat-log li .from').allTextContents(), ['alice', 'bob']);

    // A second tab of alice saves; the first tab's save is then stale: 412.
    const a2 = await a.context().newPage();
    await a2.goto(`${sigma.url}/`);
    await a2.locator('#notes[data-loaded="true"]').waitFor(STEP);
    await a2.getByLabel('Your notes').fill('changed in tab 2');
    await a2.getByRole('button', { name: 'Save' }).click();
    await a2.locator('#notes-status', { hasText: 'Saved' }).waitFor(STEP);
    await a.getByLabel('Your notes').fill('changed in tab 1');
    await a.getByRole('button', { name: 'Save' }).click();
    await a.locator('#notes-status', { hasText: 'Conflict' }).waitFor(STEP);
    await a.getByRole('button', { name: 'Reload' }).click();
    await a.locator('#notes-status', { hasText: 'Loaded' }).waitFor(STEP);
    assert.equal(await a.getByLabel('Your notes').inputValue(), 'changed in tab 2');

    // Bob's notes are his own.
    await b.locator('#notes[data-loaded="true"]').waitFor(STEP);
    assert.equal(await b.getByLabel('Your notes').inputValue(), '');

    // Log out: back to the form.
    await b.getByRole('button', { name: 'Log out' }).click();
    await b.getByLabel('User name').waitFor(STEP);

    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    await sigma.stop();
  }
});
