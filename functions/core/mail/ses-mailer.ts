import { SendEmailCommand, SESv2Client } from '@aws-sdk/client-sesv2';

export interface MailMessage {
  readonly to: readonly string[];
  readonly subject: string;
  readonly text: string;
  readonly html?: string;
}

/**
 * Mail on AWS: Amazon SES (v2 SendEmail), from a verified identity (the stack's `mailFrom`), with a text part
 * and, when given, an HTML part. One message to all recipients.
 */
export function sesMailer(options: {
  from: string;
  client?: SESv2Client;
}): (message: MailMessage) => Promise<void> {
  const client = options.client ?? new SESv2Client({});
  return async (message) => {
    await client.send(
      new SendEmailCommand({
        FromEmailAddress: options.from,
        Destination: { ToAddresses: [...message.to] },
        Content: {
          Simple: {
            Subject: { Data: message.subject, Charset: 'UTF-8' },
            Body: {
              Text: { Data: message.text, Charset: 'UTF-8' },
              ...(message.html ? { Html: { Data: message.html, Charset: 'UTF-8' } } : {}),
            },
          },
        },
      }),
    );
  };
}

/** A message body as text and HTML parts, one paragraph a line (HTML-escaped), with the signature. */
export function mailBody(lines: readonly string[]): { text: string; html: string } {
  const escape = (text: string) => text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
  return {
    text: `${lines.join('\n')}\n\n— DR Automation\n`,
    html: `<html><body>${lines.map((line) => `<p>${escape(line)}</p>`).join('')}<p>— DR Automation</p></body></html>`,
  };
}
