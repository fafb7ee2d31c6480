#!/usr/bin/env node
/**
 * Entry point named by cdk.json ("app"). A bad context value ends the process with one line
 * naming the key and the expected shape, not a stack trace.
 */
import { App } from 'aws-cdk-lib';
import { buildApp } from '../lib/app';
import { ContextError } from '../lib/config';

try {
  buildApp(new App()).app.synth();
} catch (e) {
  if (e instanceof ContextError) {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
