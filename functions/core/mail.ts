/** Email as the services write it; sent by SES on AWS, written to the outbox locally. */
export interface MailMessage {
  readonly to: readonly string[];
  readonly subject: string;
  readonly text: string;
  readonly html?: string;
}

/** A message body as text and HTML parts, one paragraph a line (HTML-escaped), with the signature. */
export function mailBody(lines: readonly string[]): { text: string; html: string } {
  const escape = (text: string) => text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
  return {
    text: `${lines.join('\n')}\n\n— DR Automation\n`,
    html: `<html><body>${lines.map((line) => `<p>${escape(line)}</p>`).join('')}<p>— DR Automation</p></body></html>`,
  };
}
