// The whole app: who is signed in (quietly, on a public page), sign in (also as another Ave account), sign out,
// and one call of an API avemint proxies. Elements a test looks for carry `data-testid`.
import { useState } from 'react';
import { apiFetch } from 'avemint';
import { useSession } from 'avemint/react';

/** The proxied route the "Call the API" button calls (an avemint `[[routes]]` prefix); set at build time. */
const API_PATH: string = import.meta.env.VITE_API_PATH ?? '/api/hello';

function ApiCall() {
  const [result, setResult] = useState<string>('');
  const call = async () => {
    try {
      const response = await apiFetch(API_PATH);
      setResult(`${response.status} ${await response.text()}`);
    } catch (error) {
      setResult(`failed: ${String(error)}`);
    }
  };
  return (
    <section>
      <button data-testid="call-api" onClick={() => void call()}>
        Call the API ({API_PATH})
      </button>
      <pre data-testid="api-result">{result}</pre>
    </section>
  );
}

export function App() {
  const session = useSession();
  return (
    <main>
      <h1>avemint React example</h1>
      {/* Any path serves this page (avemint's SPA fallback): show which one, so a deep link can be checked. */}
      <p>
        Page: <code data-testid="path">{window.location.pathname}</code>
      </p>
      <p>
        Status: <strong data-testid="status">{session.status}</strong>
      </p>
      {session.status === 'authenticated' && (
        <>
          <p>
            Signed in as <span data-testid="user">{session.user.name ?? session.user.preferred_username ?? session.user.sub}</span>
          </p>
          <button data-testid="sign-out" onClick={() => void session.signOut()}>
            Sign out
          </button>{' '}
          <button data-testid="sign-out-all" onClick={() => void session.signOut({ scope: 'all' })}>
            Sign out everywhere
          </button>{' '}
          <button data-testid="switch-account" onClick={() => session.signIn({ prompt: 'select_account' })}>
            Switch account
          </button>
          <ApiCall />
        </>
      )}
      {session.status === 'unauthenticated' && (
        <button data-testid="sign-in" onClick={() => session.signIn()}>
          Sign in
        </button>
      )}
      {session.status === 'error' && (
        <p data-testid="error">
          avemint cannot answer right now: {String(session.error)}{' '}
          <button onClick={() => void session.refresh()}>Try again</button>
        </p>
      )}
    </main>
  );
}
