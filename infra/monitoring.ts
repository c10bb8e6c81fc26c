import { Duration } from 'aws-cdk-lib';
import {
  Alarm,
  AlarmStatusWidget,
  ComparisonOperator,
  Dashboard,
  GraphWidget,
  Metric,
  SingleValueWidget,
  TreatMissingData,
} from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import type { IKey } from 'aws-cdk-lib/aws-kms';
import { Topic } from 'aws-cdk-lib/aws-sns';
import { EmailSubscription } from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import { METRICS_NAMESPACE } from '../functions/aws/metrics.ts';

export interface MonitoringProps {
  /** Encrypts the alarm topic (CloudWatch may use it: the key policy grants it). */
  readonly key: IKey;
  /** Addresses subscribed to the alarm topic at deploy (each confirms by email). */
  readonly alarmEmails?: readonly string[];
}

/**
 * Alarms and a dashboard over the metrics the worker and the dispatcher write in Embedded Metric Format
 * (namespace DrAutomation): failed backups, the RPO violated (or the dispatcher silent), DR tests overdue;
 * the dashboard shows the guide's key figures. The alarms carry no action: subscribe what you use (SNS,
 * chatbot) to them; the product's own emails come from its alert checks.
 */
export class Monitoring extends Construct {
  readonly alarms: {
    readonly failedBackups: Alarm;
    readonly rpo: Alarm;
    readonly testsOverdue: Alarm;
    readonly primaryDown: Alarm;
  };
  /** Where the alarms notify. */
  readonly topic: Topic;
  readonly dashboard: Dashboard;

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);
    const metric = (metricName: string, statistic: string, period = Duration.minutes(5)) =>
      new Metric({ namespace: METRICS_NAMESPACE, metricName, statistic, period });
    this.alarms = {
      failedBackups: new Alarm(this, 'FailedBackups', {
        alarmDescription: 'DR Automation: a backup failed (no target holds it)',
        metric: metric('BackupFailed', 'Sum'),
        threshold: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
      rpo: new Alarm(this, 'RpoViolated', {
        alarmDescription:
          'DR Automation: the newest restore point is older than the RPO, or the dispatcher stopped reporting',
        metric: metric('RpoViolated', 'Maximum'),
        threshold: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        // The dispatcher reports every minute: silence is a problem in itself.
        treatMissingData: TreatMissingData.BREACHING,
      }),
      testsOverdue: new Alarm(this, 'DrTestsOverdue', {
        alarmDescription: 'DR Automation: a DR test type has not passed within testFrequencyDays',
        metric: metric('DrTestsOverdue', 'Maximum', Duration.hours(1)),
        threshold: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
      primaryDown: new Alarm(this, 'PrimaryDown', {
        alarmDescription:
          'DR Automation: the primary database failed its probe three minutes in a row (the watch: connect, not in recovery, writable)',
        metric: metric('PrimaryUp', 'Minimum', Duration.minutes(1)),
        threshold: 1,
        comparisonOperator: ComparisonOperator.LESS_THAN_THRESHOLD,
        evaluationPeriods: 3,
        datapointsToAlarm: 3,
        // No figure: no source configured (the dispatcher's silence is the RPO alarm's)
        treatMissingData: TreatMissingData.NOT_BREACHING,
      }),
    };
    const hourly = (name: string, statistic: string) => metric(name, statistic, Duration.hours(1));
    // Every alarm, when it fires and when it clears, to one topic operators subscribe to (the README says how).
    this.topic = new Topic(this, 'AlarmTopic', {
      displayName: 'DR Automation alarms',
      masterKey: props.key,
      enforceSSL: true,
    });
    for (const alarm of Object.values(this.alarms)) {
      alarm.addAlarmAction(new SnsAction(this.topic));
      alarm.addOkAction(new SnsAction(this.topic));
    }
    for (const email of props.alarmEmails ?? []) this.topic.addSubscription(new EmailSubscription(email));
    this.dashboard = new Dashboard(this, 'Dashboard', {
      widgets: [
        [
          new AlarmStatusWidget({
            title: 'DR alarms',
            alarms: Object.values(this.alarms),
            width: 8,
          }),
          new SingleValueWidget({
            title: 'Newest restore point age (h)',
            metrics: [metric('RpoAgeHours', 'Maximum')],
            width: 8,
          }),
          new SingleValueWidget({
            title: 'DR test types overdue',
            metrics: [metric('DrTestsOverdue', 'Maximum')],
            width: 8,
          }),
        ],
        [
          new GraphWidget({
            title: 'Backups: succeeded, partial, failed',
            left: [
              hourly('BackupSucceeded', 'Sum'),
              hourly('BackupPartial', 'Sum'),
              hourly('BackupFailed', 'Sum'),
            ],
            width: 12,
          }),
          new GraphWidget({
            title: 'Backup duration (s): average and p95',
            left: [hourly('BackupDuration', 'Average'), hourly('BackupDuration', 'p95')],
            width: 12,
          }),
        ],
        [
          new GraphWidget({
            title: 'Bytes read and stored',
            left: [hourly('BackupBytesRead', 'Sum'), hourly('BackupBytesStored', 'Sum')],
            width: 12,
          }),
          new GraphWidget({
            title: 'RPO: newest restore point age (h) and violation',
            left: [metric('RpoAgeHours', 'Maximum')],
            right: [metric('RpoViolated', 'Maximum')],
            width: 12,
          }),
        ],
      ],
    });
  }
}
