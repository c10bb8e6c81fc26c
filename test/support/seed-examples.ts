/**
 * The JSON examples of the user's DR guide (shared/seed/000_*.txt), copied as written. The API must accept
 * each of them unchanged; only the schedule examples' target id must exist, so tests create a target with
 * the id the guide uses (`s3-target-id`) first.
 */
export const seedConfig = {
  rto: 4,
  rpo: 1,
  backupRetentionDays: 30,
  testFrequencyDays: 90,
  autoFailover: false,
  notificationEmails: ['admin@example.com'],
};

/** "API Reference: Create DR Config". */
export const seedConfigApiReference = { rto: 4, rpo: 1, backupRetentionDays: 30 };

/** "Best Practices: Encrypt Backups". */
export const seedEncryption = { encryption: { algorithm: 'AES-256', keyRotation: 90 } };

export const seedTargets = {
  LOCAL: { name: 'Local Storage', targetType: 'LOCAL', config: { path: '/var/backups/event-manager' } },
  S3: {
    name: 'AWS S3 Production',
    targetType: 'S3',
    config: {
      bucket: 'my-event-backups',
      region: 'us-east-1',
      accessKeyId: 'AKIAIOSFODNN7EXAMPLE',
      secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
      encryption: 'AES256',
    },
  },
  AZURE: {
    name: 'Azure Backup',
    targetType: 'AZURE',
    config: {
      accountName: 'myeventbackups',
      accountKey: 'your-account-key',
      containerName: 'backups',
      region: 'eastus',
    },
  },
  GCP: {
    name: 'GCP Backup',
    targetType: 'GCP',
    config: {
      projectId: 'my-project-123',
      bucket: 'event-manager-backups',
      keyFile: '/path/to/service-account-key.json',
    },
  },
  FTP: {
    name: 'FTP Backup',
    targetType: 'FTP',
    config: {
      host: 'ftp.example.com',
      port: 21,
      username: 'backup-user',
      password: 'secure-password',
      path: '/backups/event-manager',
    },
  },
  SFTP: {
    targetType: 'SFTP',
    config: {
      host: 'sftp.example.com',
      port: 22,
      username: 'backup-user',
      privateKey: '/path/to/private-key',
      path: '/backups',
    },
  },
} as const;

/** The secret values in the examples above: none may ever come back from the API or sit on disk in clear. */
export const seedSecretValues = [
  'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY',
  'your-account-key',
  '/path/to/service-account-key.json',
  'secure-password',
  '/path/to/private-key',
];

export const seedSchedules = {
  dailyFull: {
    name: 'Daily Full Backup',
    scheduleType: 'FULL',
    frequency: 'DAILY',
    cronExpression: '0 2 * * *',
    active: true,
    retentionDays: 7,
    targets: ['s3-target-id'],
  },
  hourlyIncremental: {
    name: 'Hourly Incremental',
    scheduleType: 'INCREMENTAL',
    frequency: 'HOURLY',
    cronExpression: '0 * * * *',
    active: true,
    retentionDays: 2,
    targets: ['s3-target-id'],
  },
  /** "API Reference: Create Backup Schedule". */
  apiReference: { name: 'Daily Backup', scheduleType: 'FULL', cronExpression: '0 2 * * *' },
};

/** The guide's cron table: expression → its first two firings after 2026-01-01T00:30:00Z (a Thursday), UTC. */
export const seedCronTable: readonly [string, string, string][] = [
  ['0 * * * *', '2026-01-01T01:00:00.000Z', '2026-01-01T02:00:00.000Z'],
  ['0 2 * * *', '2026-01-01T02:00:00.000Z', '2026-01-02T02:00:00.000Z'],
  ['0 */6 * * *', '2026-01-01T06:00:00.000Z', '2026-01-01T12:00:00.000Z'],
  ['0 3 * * 0', '2026-01-04T03:00:00.000Z', '2026-01-11T03:00:00.000Z'],
  ['0 0 1 * *', '2026-02-01T00:00:00.000Z', '2026-03-01T00:00:00.000Z'],
];
