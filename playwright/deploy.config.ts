import { defineConfig } from '@playwright/test';
import { CHROMIUM, CHROMIUM_ARGS } from './lib/chromium';

/**
 * The deployed page: deploy/*.spec.ts drive the WebXR page served by the loco-web container
 * through the ingress stand-in, against agents and stand-in VMs in containers. Run by
 * images/test_images.py, which starts the release (images/podrun.py or compose.yaml) and passes
 * where it is: LOCO_DEPLOY_HOST (the page's host name), LOCO_DEPLOY_IP (the address that name
 * resolves to for this Chromium), LOCO_DEPLOY_URL, LOCO_DEPLOY_KEY, LOCO_DEPLOY_N and
 * LOCO_DEPLOY_AGENTS (each agent's http://ADDR:8080, for its metrics).
 */
const host = process.env.LOCO_DEPLOY_HOST;
const ip = process.env.LOCO_DEPLOY_IP;
const args = [...CHROMIUM_ARGS];
// The page's host name resolves to the ingress stand-in; its certificate is self-signed (the test's
// stand-in for cert-manager's), so certificate errors are ignored for this browser only.
if (host && ip) args.push(`--host-resolver-rules=MAP ${host} ${ip}`, '--ignore-certificate-errors');
// A plain-HTTP page on a container address (compose.yaml's proxy) is not a secure context, so
// WebXR would be off; a browser on the host itself would use http://localhost:PORT, which is.
const url = process.env.LOCO_DEPLOY_URL ?? '';
if (url.startsWith('http://')) args.push(`--unsafely-treat-insecure-origin-as-secure=${new URL(url).origin}`);

export default defineConfig({
  testDir: './deploy',
  workers: 1,
  forbidOnly: true,
  retries: 0,
  timeout: 300_000,
  expect: { timeout: 15_000 },
  reporter: [['list']],
  outputDir: './test-results/deploy',
  use: {
    browserName: 'chromium',
    headless: true,
    viewport: { width: 1280, height: 720 },
    ignoreHTTPSErrors: true,
    launchOptions: { executablePath: CHROMIUM, args },
    screenshot: 'only-on-failure',
    trace: 'off',
    video: 'off',
  },
});
