// dakd's compiled pipeline as a KFP API server serves it, for the kubeflow/pipelines frontend's mock
// backend. benchmarks/kfp_ui/screenshots.sh copies this file into a scratch copy of that frontend's
// mock-backend/ and registers it before the mock's own routes; it is no part of kubeflow/pipelines.
//
// Env: DAKD_PIPELINE_YAML (the compiled YAML), DAKD_VERSION_NAME (the version's display name),
// DAKD_PIPELINE_DESCRIPTION (the pipeline's own description).
import express from 'express';
import fs from 'fs';
import YAML from 'yaml';

export const DAKD_PIPELINE_ID = 'dakd';
export const DAKD_VERSION_ID = 'dakd-version';

export default function registerDakd(app: express.Application) {
  const text = fs.readFileSync(process.env.DAKD_PIPELINE_YAML as string, 'utf8');
  const docs = YAML.parseAllDocuments(text).map((doc) => doc.toJSON());
  // A package with a platform spec (Kubernetes settings): the API server keeps both documents under
  // the version's pipeline_spec, as {pipeline_spec, platform_spec}.
  const spec = docs.length > 1 ? { pipeline_spec: docs[0], platform_spec: docs[1] } : docs[0];
  // `dakd submit` uploads the compiled description (the parameter guide) as the version's
  // description and a fixed summary as the pipeline's (dakd_core/orchestration/kfp_client.py: submit).
  const description = docs[0].pipelineInfo.description as string;
  const pipelineDescription = process.env.DAKD_PIPELINE_DESCRIPTION as string;
  const created_at = new Date('2026-12-07T12:00:00Z');
  const pipeline = {
    pipeline_id: DAKD_PIPELINE_ID,
    display_name: 'dakd',
    description: pipelineDescription,
    created_at,
  };
  const version = {
    pipeline_id: DAKD_PIPELINE_ID,
    pipeline_version_id: DAKD_VERSION_ID,
    display_name: process.env.DAKD_VERSION_NAME || 'dakd',
    description,
    created_at,
    pipeline_spec: spec,
  };
  const v2 = '/apis/v2beta1/pipelines/' + DAKD_PIPELINE_ID;
  app.get(v2, (_, res) => res.json(pipeline));
  app.get(v2 + '/versions', (_, res) => res.json({ pipeline_versions: [version], total_size: 1 }));
  app.get(v2 + '/versions/' + DAKD_VERSION_ID, (_, res) => res.json(version));
  // The v1 endpoints the pages also ask (they show the v2 version's spec): the pipeline, the
  // version, the pipeline's versions, the version's template.
  const v1Version = {
    id: DAKD_VERSION_ID,
    name: version.display_name,
    description,
    created_at,
    resource_references: [{ key: { type: 'PIPELINE', id: DAKD_PIPELINE_ID }, relationship: 'OWNER' }],
  };
  const v1 = '/apis/v1beta1';
  app.get(v1 + '/pipelines/' + DAKD_PIPELINE_ID, (_, res) =>
    res.json({
      id: DAKD_PIPELINE_ID,
      name: 'dakd',
      description: pipelineDescription,
      created_at,
      default_version: v1Version,
    }),
  );
  app.get(v1 + '/pipeline_versions/' + DAKD_VERSION_ID, (_, res) => res.json(v1Version));
  app.get(v1 + '/pipeline_versions/' + DAKD_VERSION_ID + '/templates', (_, res) =>
    res.json({ template: text }),
  );
  app.get(v1 + '/pipeline_versions', (req, res, next) =>
    req.query['resource_key.id'] === DAKD_PIPELINE_ID
      ? res.json({ versions: [v1Version], total_size: 1 })
      : next(),
  );
}
