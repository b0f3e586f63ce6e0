// The headless half of benchmarks/kfp_ui/screenshots.sh (which starts the servers and sets the
// environment): opens the KFP UI's Create-run page and pipeline page for the dakd version the mock
// backend serves, writes the screenshots and form.json to OUT, and fails when the form does not read
// as the docs say (docs/ui.md): a field without a value, a parameter group split apart, a parameter missing, or a
// parameter with choices that is not a drop-down list.
//
// Env: UI (the vite URL), FRONTEND (the frontend copy: playwright and yaml come from its
//      node_modules), OUT (output folder), CHROMIUM (the browser binary), DAKD_PIPELINE_YAML.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const { UI, FRONTEND, OUT, CHROMIUM, DAKD_PIPELINE_YAML } = process.env;
const require = createRequire(path.join(FRONTEND, 'package.json'));
const { chromium } = require('playwright');
// the compiled pipeline's parameters, to check the form against
const spec = require('yaml').parseAllDocuments(fs.readFileSync(DAKD_PIPELINE_YAML, 'utf8'))[0].toJSON();
const parameters = spec.root.inputDefinitions.parameters;
// vite compiles the UI on the first request: minutes on a loaded machine
const SLOW = 600_000;
const PIPELINE = 'pipelineId=dakd&pipelineVersionId=dakd-version';

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const failures = [];
try {
  // -- the Create-run page: the form of every parameter, prefilled with the defaults
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.setDefaultTimeout(SLOW);
  await page.goto(`${UI}/#/runs/new?${PIPELINE}`);
  await page.getByText('Run parameters').waitFor();
  await page.locator('#data_source_uri').waitFor();
  // every field in order: the parameter, the label the UI shows, the value in the box, and whether
  // the box is a drop-down list (a parameter with choices) or free text
  const form = await page.$$eval('.MuiFormControl-root', (controls) =>
    controls
      .map((control) => {
        const label = control.querySelector('label')?.textContent || '';
        const list = control.querySelector('.MuiSelect-select');
        const box = list || control.querySelector('input');
        return box && {
          name: box.id,
          label,
          kind: list ? 'list' : 'text',
          value: list ? list.textContent : box.value,
        };
      })
      .filter((field) => field && field.label.includes(' - ')),
  );
  fs.writeFileSync(path.join(OUT, 'kfp_form.json'), JSON.stringify(form, null, 1) + '\n');
  const shown = form.map((field) => field.name).sort();
  if (JSON.stringify(shown) !== JSON.stringify(Object.keys(parameters).sort())) {
    failures.push(`form: shows ${shown.join(' ')}, the pipeline has ${Object.keys(parameters).join(' ')}`);
  }
  for (const field of form) {
    if ((parameters[field.name]?.literals !== undefined) !== (field.kind === 'list')) {
      failures.push(`form: ${field.label} is a ${field.kind} box`);
    }
    if (field.value === '' || field.value === 'Select a value') {
      failures.push(`form: ${field.label} shows an empty box`);
    }
  }
  // a group's parameters stand together: each name prefix (data_, teacher_, ...) in one run
  const groups = form.map((field) => field.name.split('_')[0]);
  const runs = groups.filter((group, k) => k === 0 || group !== groups[k - 1]);
  if (new Set(runs).size !== runs.length) failures.push(`form: groups split apart: ${runs.join(' ')}`);
  const lists = form.filter((field) => field.kind === 'list').map((field) => field.name);
  console.log(`form: ${form.length} parameters, groups in order: ${runs.join(' ')}; lists: ${lists.join(' ')}`);
  // the whole form in one picture: a viewport as tall as the page's scrolling content
  const height = await page.evaluate(() =>
    Math.max(...[...document.querySelectorAll('*')].map((e) => e.scrollHeight)),
  );
  await page.setViewportSize({ width: 1280, height: Math.min(height + 50, 16000) });
  await page.screenshot({ path: path.join(OUT, 'kfp_create_run.png') });

  // -- the pipeline page: the graph, and the summary panel with the descriptions (the guide)
  const details = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
  details.setDefaultTimeout(SLOW);
  await details.goto(`${UI}/#/pipelines/details/dakd/version/dakd-version`);
  await details.getByRole('button', { name: 'Show Summary' }).waitFor();
  await details.waitForTimeout(5000); // the graph's layout settles
  await details.screenshot({ path: path.join(OUT, 'kfp_pipeline_graph.png') });
  await details.getByRole('button', { name: 'Show Summary' }).click();
  await details.getByText('Pipeline Description').waitFor();
  const summary = await details.locator('body').innerText();
  // the guide, rendered as markdown: names with underscores intact (not read as emphasis)
  for (const expected of ['Version Description', 'data_source_format', 'recipe', 'lambda_kl / 10']) {
    if (!summary.includes(expected)) failures.push(`summary panel: no "${expected}"`);
  }
  // one guide: the version's (the pipeline's description is a fixed summary, kfp_client.py)
  const guides = summary.split('distill_lambda_kl_aux').length - 1; // once in the guide
  if (guides !== 1) failures.push(`summary panel: the guide appears ${guides} times, not once`);
  if (!summary.includes(process.env.DAKD_PIPELINE_DESCRIPTION)) failures.push('summary panel: no pipeline description');
  // the whole panel in one picture: it grows upwards from the page's bottom, and a long guide
  // starts above the window; the window is made taller by what is hidden
  const top = await details.evaluate(
    () =>
      [...document.querySelectorAll('div')]
        .find((e) => e.textContent === 'Static Pipeline Summary')
        .getBoundingClientRect().top,
  );
  await details.setViewportSize({ width: 1600, height: Math.min(1200 + Math.ceil(Math.max(0, 150 - top)), 16000) });
  await details.waitForTimeout(2000);
  await details.screenshot({ path: path.join(OUT, 'kfp_pipeline_summary.png') });
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join('\n'));
  process.exit(1);
}
console.log(`screenshots in ${OUT}`);
