WITH "events" AS (
  SELECT
    'identifies' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST("t"."received_at" AS TIMESTAMP) AS "__received_at",
    CAST("t"."id" AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    "t"."plan" AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "website"."identifies" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'identifies' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST("t"."received_at" AS TIMESTAMP) AS "__received_at",
    CAST("t"."id" AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    "t"."plan" AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "ios"."identifies" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'order_completed' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST("t"."received_at" AS TIMESTAMP) AS "__received_at",
    CAST("t"."id" AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    "t"."currency" AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    "t"."product_sku" AS "product_sku",
    "t"."revenue" AS "revenue"
  FROM "website"."order_completed" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'order_completed' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST("t"."received_at" AS TIMESTAMP) AS "__received_at",
    CAST("t"."id" AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    "t"."currency" AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    "t"."product_sku" AS "product_sku",
    "t"."revenue" AS "revenue"
  FROM "ios"."order_completed" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'pages' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    "t"."name" AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "website"."pages" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'pages' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    "t"."name" AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "ios"."pages" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'product_viewed' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    "t"."category" AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "website"."product_viewed" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'product_viewed' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    "t"."category" AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "ios"."product_viewed" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'tracks' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "website"."tracks" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  UNION ALL
  SELECT
    'tracks' AS "__event",
    COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
    "t"."user_id" AS "user_id",
    "t"."anonymous_id" AS "anonymous_id",
    "t"."timestamp" AS "__ts",
    CAST(NULL AS TIMESTAMP) AS "__received_at",
    CAST(NULL AS TEXT) AS "__id",
    CAST(NULL AS TEXT) AS "category",
    CAST(NULL AS TEXT) AS "currency",
    CAST(NULL AS TEXT) AS "name",
    CAST(NULL AS TEXT) AS "plan",
    CAST(NULL AS TEXT) AS "product_sku",
    CAST(NULL AS DOUBLE) AS "revenue"
  FROM "ios"."tracks" AS "t"
  WHERE
    "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
    AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
), "profile_aggregates" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    ARG_MAX(
      "e"."anonymous_id",
      CASE WHEN NOT "e"."anonymous_id" IS NULL THEN ("e"."__ts", "e"."anonymous_id") END
    ) AS "__anonymous_id",
    COUNT_IF("e"."__event" = 'product_viewed') AS "a0",
    LIST_SORT(
      ARRAY_AGG(DISTINCT CAST("e"."category" AS TEXT)) FILTER(WHERE
        "e"."__event" = 'product_viewed' AND NOT "e"."category" IS NULL)
    ) AS "a1",
    COUNT_IF("e"."__event" = 'order_completed') AS "a2",
    ARG_MAX(
      "e"."currency",
      CASE
        WHEN "e"."__event" = 'order_completed' AND NOT "e"."currency" IS NULL
        THEN ("e"."__ts", "e"."__received_at", "e"."__id")
      END
    ) AS "a3",
    SUM(
      CASE WHEN "e"."__event" = 'order_completed' THEN CAST("e"."revenue" AS DOUBLE) END
    ) AS "a4",
    COUNT_IF(
      "e"."__event" = 'order_completed'
      AND "e"."__ts" > CAST('2024-01-31 12:00:00' AS TIMESTAMP)
      AND "e"."revenue" > 50
      AND LEFT("e"."product_sku", 4) = 'sku-'
    ) AS "a5",
    ARG_MAX(
      "e"."plan",
      CASE
        WHEN "e"."__event" = 'identifies' AND NOT "e"."plan" IS NULL
        THEN ("e"."__ts", "e"."__received_at", "e"."__id")
      END
    ) AS "a6",
    COUNT_IF(
      "e"."__event" = 'product_viewed'
      AND "e"."__ts" > CAST('2024-02-23 12:00:00' AS TIMESTAMP)
    ) AS "a7",
    COUNT_IF("e"."__event" = 'pages' AND "e"."name" IN ('Pricing', 'Home')) AS "a8"
  FROM "events" AS "e"
  GROUP BY
    "e"."__profile"
)
SELECT
  "profile_aggregates"."__profile",
  "profile_aggregates"."__user_id",
  "profile_aggregates"."__anonymous_id",
  CASE
    WHEN "profile_aggregates"."a0" > 0
    THEN COALESCE("profile_aggregates"."a1", [])
  END AS "categories",
  "profile_aggregates"."a3" AS "last_currency",
  CASE
    WHEN "profile_aggregates"."a2" > 0
    THEN COALESCE("profile_aggregates"."a4", 0)
  END AS "lifetime_revenue",
  (
    NOT "profile_aggregates"."__user_id" IS NULL
    AND (
      COALESCE(
        (
          COALESCE("profile_aggregates"."a5", 0) >= 2
        )
        AND (
          NOT (
            COALESCE("profile_aggregates"."a6" = 'enterprise', FALSE)
          )
        ),
        FALSE
      )
    )
  ) AS "repeat_buyers",
  (
    COALESCE(
      (
        COALESCE("profile_aggregates"."a7", 0) >= 1
      )
      AND (
        COALESCE("profile_aggregates"."a2", 0) = 0
      )
      AND (
        COALESCE("profile_aggregates"."a8", 0) >= 1
      ),
      FALSE
    )
  ) AS "viewers_not_buyers"
FROM "profile_aggregates"
