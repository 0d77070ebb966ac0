// Compiled (never run) by `npm run typecheck` (tsc --strict): the package's declarations as an app sees them,
// imported by the package's own name so the `exports` map's `types` are what is checked. Each
// `@ts-expect-error` is a misuse the declarations must refuse: tsc fails if one of them compiles.
import {
  apiFetch,
  CHANNEL_NAME,
  clearTokens,
  configure,
  endSession,
  events,
  EXPIRY_MARGIN_SECONDS,
  fetchWithToken,
  getToken,
  getUser,
  LOGGED_OUT_EVENT,
  LoginRequiredError,
  logout,
  PROMPTS,
  redirectToLogin,
  session,
  sessions,
  signIn,
  signOut,
  stopWatching,
  TokenError,
  watchSession,
} from 'avemint';
import type { LoggedOutReason, SessionInfo, SessionListing, SignInPrompt, User } from 'avemint';

async function app(): Promise<void> {
  const user: User | null = await getUser();
  if (user !== null) {
    const sub: string = user.sub;
    const name: string | undefined = user.name;
    const left: number = user.expires_in;
    void [sub, name, left];
  }
  // @ts-expect-error getUser may resolve to null
  const sure: User = await getUser();
  void sure;

  signIn();
  signIn({ returnTo: '/orders', prompt: 'select_account' });
  signIn({ prompt: 'consent' });
  // @ts-expect-error Ave's prompt=none is a no-op, so avemint does not take it
  signIn({ prompt: 'none' });
  // @ts-expect-error returnTo is a path
  signIn({ returnTo: 42 });

  await signOut();
  await signOut({ scope: 'others' });
  await logout({ scope: 'all' });
  // @ts-expect-error no such scope
  await signOut({ scope: 'everyone' });

  const token: string = await getToken({ audience: 'https://api.example.com' });
  await getToken({ profile: 'orders', fresh: true });
  // @ts-expect-error fresh is a boolean
  await getToken({ fresh: 'yes' });
  const r1: Response = await fetchWithToken('https://api.example.com/x', { method: 'PUT' }, { profile: 'orders' });
  const r2: Response = await apiFetch('/api/orders', { method: 'POST', body: '{}' });
  // @ts-expect-error apiFetch takes a path or a URL
  await apiFetch({ url: '/api/x' });
  void [token, r1, r2];

  const listed: SessionListing[] = await sessions();
  const first = listed[0];
  if (first) await endSession(first.id);
  const info: SessionInfo = await session();
  const flag: true = info.authenticated;
  const watched: SessionInfo | null = await watchSession();
  stopWatching();
  clearTokens();
  void [flag, watched];

  configure({ base: 'https://auth.example.com', onLoginRequired: () => redirectToLogin() });
  // @ts-expect-error the handler is a function
  configure({ onLoginRequired: 'nope' });

  events.addEventListener(LOGGED_OUT_EVENT, (event) => {
    const reason: LoggedOutReason = event.detail.reason;
    void reason;
  });
  window.addEventListener('avemint:logged-out', (event) => {
    const reason: LoggedOutReason = event.detail.reason;
    void reason;
  });

  const channel: 'avemint' = CHANNEL_NAME;
  const margin: number = EXPIRY_MARGIN_SECONDS;
  const prompts: readonly SignInPrompt[] = PROMPTS;
  void [channel, margin, prompts];

  try {
    await getToken();
  } catch (e) {
    if (e instanceof TokenError) {
      const status: number = e.status;
      const code: string | undefined = e.error;
      void [status, code];
    } else if (e instanceof LoginRequiredError) {
      const message: string = e.message;
      void message;
    }
  }
}
void app;
