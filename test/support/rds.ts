import {
  CreateDBClusterCommand,
  CreateDBInstanceCommand,
  RDSClient,
  type DBCluster,
  type DBInstance,
} from '@aws-sdk/client-rds';

/** What a describe call answered, as the adjuster may change it (moto has no database behind instances). */
export interface RdsAnswer {
  readonly command: string;
  readonly input: Record<string, unknown>;
  readonly instances: DBInstance[];
  readonly clusters: DBCluster[];
}

/**
 * An RDS client for moto's RDS API on loopback. `adjust` sees every answer: tests point the instances a
 * workflow creates at the throwaway PostgreSQL, since moto keeps metadata only.
 */
export function motoRds(
  endpoint: string,
  region: string | undefined,
  adjust?: (answer: RdsAnswer) => void,
): RDSClient {
  const client = new RDSClient({
    region: region ?? 'eu-west-1',
    endpoint,
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
  });
  if (adjust)
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        const output = result.output as { DBInstances?: DBInstance[]; DBClusters?: DBCluster[] };
        adjust({
          command: context.commandName ?? '',
          input: args.input as Record<string, unknown>,
          instances: output.DBInstances ?? [],
          clusters: output.DBClusters ?? [],
        });
        return result;
      },
      { step: 'initialize', name: 'adjustMotoAnswer' },
    );
  return client;
}

/** An Aurora PostgreSQL cluster with one writer instance `<cluster>-1` in moto. */
export async function createAuroraCluster(rds: RDSClient, cluster: string): Promise<void> {
  await rds.send(
    new CreateDBClusterCommand({
      DBClusterIdentifier: cluster,
      Engine: 'aurora-postgresql',
      MasterUsername: 'events',
      MasterUserPassword: 'not-a-real-password',
    }),
  );
  await rds.send(
    new CreateDBInstanceCommand({
      DBInstanceIdentifier: `${cluster}-1`,
      DBClusterIdentifier: cluster,
      DBInstanceClass: 'db.r6g.large',
      Engine: 'aurora-postgresql',
    }),
  );
}
