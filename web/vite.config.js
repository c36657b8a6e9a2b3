import vue from '@vitejs/plugin-vue';
import { defineConfig } from 'vite';

// `npm run dev` proxies /api like the Express server does, so the app talks to one origin in both.
const apiUrl = process.env.PIBLOOM_API_URL || 'http://127.0.0.1:8000';

export default defineConfig({
  plugins: [vue()],
  server: {
    proxy: {
      '/api': { target: apiUrl, changeOrigin: true, rewrite: (p) => p.replace(/^\/api/, '') },
    },
  },
  build: {
    target: 'es2020',
  },
  test: {
    environment: 'jsdom',
    include: ['tests/**/*.test.js'],
    restoreMocks: true,
  },
});
