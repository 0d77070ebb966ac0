import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Served by avemint on its own origin: `[spa] root = "examples/react-app/dist"` after `npm run build`, or
// `[spa] upstream = "http://127.0.0.1:5173"` in front of `npm run dev` (avemint proxies the pages, the assets and
// Vite's HMR WebSocket). Either way the page, `/auth/*` and the proxied `/api/*` routes share one origin.
export default defineConfig({
  plugins: [react()],
  server: { host: '127.0.0.1', port: 5173, strictPort: true },
  build: { outDir: 'dist', sourcemap: false },
});
