import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { SessionProvider } from 'avemint/react';

import { App } from './App';

const root = document.getElementById('root');
if (!root) throw new Error('no #root element');
createRoot(root).render(
  <StrictMode>
    {/* watch: the session's end (idle timeout, ended elsewhere) shows at once, without a failed call first. */}
    <SessionProvider watch>
      <App />
    </SessionProvider>
  </StrictMode>,
);
