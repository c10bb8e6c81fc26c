import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import nodemailer from 'nodemailer';

/**
 * Mail in the local runtime: each message is written as an RFC 5322 `.eml` file into the outbox directory,
 * where a developer opens it with any mail client (nothing leaves the machine).
 */
export async function writeToOutbox(
  outbox: string,
  message: { to: readonly string[]; subject: string; text: string; html?: string },
): Promise<string> {
  const transport = nodemailer.createTransport({ streamTransport: true, buffer: true, newline: 'unix' });
  const sent = await transport.sendMail({
    from: 'DR Automation <dr-automation@localhost>',
    to: [...message.to],
    subject: message.subject,
    text: message.text,
    ...(message.html ? { html: message.html } : {}),
  });
  await mkdir(outbox, { recursive: true, mode: 0o700 });
  const file = join(
    outbox,
    `${new Date().toISOString().replace(/[:.]/g, '-')}-${sent.messageId.replace(/[^A-Za-z0-9]/g, '').slice(0, 16)}.eml`,
  );
  await writeFile(file, sent.message as Buffer, { mode: 0o600 });
  return file;
}
